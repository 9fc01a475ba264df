#!/usr/bin/env python3
"""Independent FHIR R4 validation for carebridge tests: PyPI fhir.resources 5.1.1 (R4 4.0.1
models), a validator this project did not write.

    python3 tests/peers/validate-fhir-resources.py < resources.ndjson

stdin: NDJSON, one FHIR resource (a JSON object) per line; blank lines are skipped.
stdout: one JSON line per resource, in input order:
    {"index": n, "valid": true|false, "error": "<exception type>: <message, first 500 chars>"}
A resource is invalid when constructing its model with strict=True raises (FHIRValidationError
for structural problems; TypeError, ValueError, KeyError or AttributeError on some shapes the
models do not anticipate, which are still invalid input). Exit status 0, or 2 when the package
is missing (install it with `pip install -r tests/peers/requirements.txt`).
"""

import json
import logging
import sys

try:
    from fhir.resources.fhirabstractbase import FHIRValidationError
    from fhir.resources.fhirelementfactory import FHIRElementFactory
except ImportError as e:
    sys.stderr.write(f"fhir.resources is not installed ({e}): pip install -r tests/peers/requirements.txt\n")
    sys.exit(2)


def validate(line):
    d = json.loads(line)
    rtype = d.get("resourceType") if isinstance(d, dict) else None
    obj = FHIRElementFactory.instantiate(rtype, d, True)
    if type(obj).__name__ != rtype:
        raise ValueError(f"not an R4 resource type: {rtype}")


def main():
    # It logs a warning for some date values it cannot parse but accepts: not a verdict.
    logging.disable(logging.WARNING)
    out = sys.stdout
    index = 0
    for line in sys.stdin.buffer:
        if not line.strip():
            continue
        try:
            validate(line)
            result = {"index": index, "valid": True}
        except (FHIRValidationError, TypeError, ValueError, KeyError, AttributeError) as e:
            result = {"index": index, "valid": False, "error": f"{type(e).__name__}: {str(e)[:500]}"}
        out.write(json.dumps(result) + "\n")
        index += 1


if __name__ == "__main__":
    main()
