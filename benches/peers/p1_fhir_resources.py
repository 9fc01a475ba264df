"""P1 peer: PyPI fhir.resources 5.1.1 (FHIR R4 4.0.1 models) on the shared NDJSON corpus.

Usage: p1_fhir_resources.py CORPUS OUT.json [PASSES]

Reads the corpus into memory, makes one untimed warm-up pass (imports each type's model module,
counts verdicts), then times PASSES passes of `json.loads` + construction of the resource's
model with strict=True (which raises FHIRValidationError on a structural problem), one thread.
The model class of each resource type is looked up once through fhir.resources'
FHIRElementFactory (its generated if-chain) and then reused, the fastest honest way to call it.
"""

import json
import logging
import statistics
import sys
import time
from importlib.metadata import version

from fhir.resources.fhirabstractbase import FHIRValidationError
from fhir.resources.fhirelementfactory import FHIRElementFactory


def main():
    # fhir.resources logs a warning (to stderr) for some date values it cannot parse but accepts;
    # printing thousands of them would time the terminal, not the validator.
    logging.disable(logging.WARNING)
    corpus, out = sys.argv[1], sys.argv[2]
    passes = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    with open(corpus, "rb") as f:
        lines = [line for line in f.read().split(b"\n") if line]
    nbytes = sum(len(line) for line in lines)
    classes = {}

    def check(line):
        d = json.loads(line)
        rtype = d.get("resourceType") if isinstance(d, dict) else None
        cls = classes.get(rtype)
        if cls is None:
            obj = FHIRElementFactory.instantiate(rtype, d, True)
            if type(obj).__name__ == rtype:
                classes[rtype] = type(obj)
            return obj
        return cls(d, True)

    t = time.perf_counter()
    accepted, rejects = 0, []
    for i, line in enumerate(lines):
        try:
            check(line)
            accepted += 1
        except (FHIRValidationError, TypeError, ValueError, KeyError, AttributeError) as e:
            rtype = None
            try:
                rtype = json.loads(line).get("resourceType")
            except Exception:
                pass
            rejects.append({"line": i + 1, "resourceType": rtype,
                            "error": type(e).__name__, "message": str(e)[:300]})
    warmup = time.perf_counter() - t

    times = []
    for _ in range(passes):
        t = time.perf_counter()
        ok = 0
        for line in lines:
            try:
                check(line)
                ok += 1
            except (FHIRValidationError, TypeError, ValueError, KeyError, AttributeError):
                pass
        times.append(time.perf_counter() - t)
        assert ok == accepted
    secs = statistics.median(times)
    result = {
        "side": "fhir.resources",
        "what": "json.loads + fhir.resources model construction (strict=True), one thread",
        "version": "fhir.resources " + version("fhir.resources") + ", Python " + sys.version.split()[0],
        "resources": len(lines),
        "bytes": nbytes,
        "accepted": accepted,
        "rejected": len(rejects),
        "rejects": rejects[:25],
        "passes": times,
        "seconds": secs,
        "resources_per_s": len(lines) / secs,
        "bytes_per_s": nbytes / secs,
        "warmup_seconds": warmup,
    }
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"fhir.resources: {len(lines)} resources, {accepted} accepted, "
          f"{len(lines) / secs:.0f} resources/s", file=sys.stderr)


if __name__ == "__main__":
    main()
