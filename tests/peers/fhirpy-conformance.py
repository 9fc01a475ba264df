#!/usr/bin/env python3
"""A FHIR client this project did not write (PyPI `fhirpy` 2.3.1), used through its public API
against a running carebridge gateway; every resource and Bundle the gateway answered is then
validated with `fhir.resources` 5.1.1 (exactly R4 4.0.1).

    python3 tests/peers/fhirpy-conformance.py < input.json

stdin:  {"base": "http://…/fhir", "careteam": "<token>", "gp": "<token>",
         "patient": "<gateway patient id>", "tag": "<unique suffix for ids>"}
stdout: {"steps": [{"name", "ok", "detail"}], "invalid": [{"resourceType", "id", "error"}],
         "resources": <how many were validated>}
Exit status 0 when every step passed and every resource is valid, 1 otherwise.
"""

import json
import logging
import re
import sys

from fhir.resources.fhirelementfactory import FHIRElementFactory
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import MultipleResourcesFound

# fhir.resources logs (to stderr) some date values it accepts; the report is what counts.
logging.disable(logging.WARNING)
CPR = "urn:oid:1.2.208.176.1.2"
args = json.load(sys.stdin)
base, tag, patient = args["base"], args["tag"], args["patient"]
careteam = SyncFHIRClient(base, authorization=f"Bearer {args['careteam']}")
gp = SyncFHIRClient(f"{base}/gp", authorization=f"Bearer {args['gp']}")
steps, answered = [], []


def keep(data):
    """Keeps what the gateway answered (a resource or a Bundle) for validation."""
    if data is not None:
        plain = json.loads(json.dumps(data))
        if isinstance(plain, dict) and "resourceType" in plain:
            answered.append(plain)
    return data


def step(name):
    def run(fn):
        try:
            steps.append({"name": name, "ok": True, "detail": str(fn() or "")})
        except Exception as e:  # noqa: BLE001 - every failure is reported as the step's
            steps.append({"name": name, "ok": False, "detail": f"{type(e).__name__}: {e}"[:2000]})
        return fn

    return run


def must(cond, what):
    if not cond:
        raise AssertionError(what)


@step("metadata")
def _():
    cap = keep(careteam.execute("metadata", method="get"))
    must(cap["fhirVersion"] == "4.0.1", cap["fhirVersion"])


pid = f"fp-{tag}"


@step("transaction to a sector base")
def _():
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "id": pid, "identifier": [{"system": CPR, "value": f"98{tag.zfill(8)}"}]},
         "request": {"method": "PUT", "url": f"Patient/{pid}"}}]}
    # execute("") posts to the client's base, with the slash a joined path leaves.
    resp = keep(gp.execute("", method="post", data=bundle))
    must(resp["type"] == "transaction-response", resp["type"])
    return resp["entry"][0]["response"]["location"]


state = {}


@step("create")
def _():
    c = gp.resource("Condition", identifier=[{"system": "urn:test:fp", "value": f"c-{tag}"}],
                    clinicalStatus={"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
                    code={"coding": [{"system": "urn:oid:1.2.208.176.2.31", "code": "K86", "display": "Hypertension"}]},
                    subject={"reference": f"Patient/{pid}"})
    c.save()
    keep(c)
    must(c["meta"]["versionId"] == "1", c["meta"])
    state["id"] = c.id
    state["resource"] = c
    return c.id


@step("conditional create")
def _():
    again = gp.resource("Condition", **{k: v for k, v in state["resource"].items() if k not in ("id", "meta")})
    found, created = gp.resources("Condition").search(identifier=f"urn:test:fp|c-{tag}").get_or_create(again)
    keep(found)
    must(not created and found.id == state["id"], f"{found.id} created={created}")


@step("update, then a stale If-Match is 412")
def _():
    c = state["resource"]
    c["note"] = [{"text": "v2"}]
    c.save()
    keep(c)
    must(c["meta"]["versionId"] == "2", c["meta"])
    stale = SyncFHIRClient(f"{base}/gp", authorization=f"Bearer {args['gp']}", extra_headers={"If-Match": 'W/"1"'})
    lost = stale.resource("Condition", **{k: v for k, v in c.items() if k != "meta"})
    lost["note"] = [{"text": "lost update"}]
    try:
        lost.save()
    except MultipleResourcesFound as e:  # fhirpy's exception for 412 Precondition Failed
        return f"412: {str(e)[:80]}"
    raise AssertionError("the stale update was applied")


@step("read, vread and history")
def _():
    c = gp.reference("Condition", state["id"]).to_resource()
    keep(c)
    must(c["meta"]["versionId"] == "2", c["meta"])
    v1 = keep(gp.execute(f"Condition/{state['id']}/_history/1", method="get"))
    must("note" not in v1, "version 1 has no note")
    hist = keep(gp.execute(f"Condition/{state['id']}/_history", method="get"))
    must(hist["type"] == "history" and len(hist["entry"]) == 2, len(hist["entry"]))
    c.refresh()
    gid = careteam.resources("Condition").search(identifier=f"urn:test:fp|c-{tag}").get().id
    keep(careteam.reference("Condition", gid).to_resource())
    keep(careteam.execute(f"Condition/{gid}/_history/1", method="get"))
    return gid


@step("search with paging to the end")
def _():
    search = careteam.resources("DetectedIssue").search(patient=patient).limit(2)
    total = search.count()
    alerts = search.fetch_all()
    for a in alerts:
        keep(a)
    must(total > 2 and len(alerts) == total, f"{len(alerts)} of {total}")
    state["alert"] = alerts[0].id
    return f"{total} alerts"


@step("_include")
def _():
    bundle = keep(careteam.resources("Communication").search(patient=patient).include("Communication", "about").fetch_raw())
    modes = [e["search"]["mode"] for e in bundle.get("entry", [])]
    must("include" in modes and "match" in modes, modes)
    return f"{len(modes)} entries"


@step("$total-plan")
def _():
    plan = keep(careteam.reference("Patient", patient).execute("$total-plan", method="get"))
    must(plan["type"] == "collection", plan["type"])
    refs = 0
    for e in plan["entry"]:
        must(e["fullUrl"].startswith(base + "/"), e["fullUrl"])
        for t, i in re.findall(r'"reference": "([A-Za-z]+)/([A-Za-z0-9.-]+)"', json.dumps(e["resource"])):
            keep(careteam.reference(t, i).to_resource())
            refs += 1
    return f"{len(plan['entry'])} entries, {refs} references read"


@step("$acknowledge")
def _():
    params = {"resourceType": "Parameters", "parameter": [{"name": "author", "valueString": "fhirpy"}]}
    acked = keep(careteam.reference("DetectedIssue", state["alert"]).execute("$acknowledge", data=params))
    must(acked["resourceType"] == "DetectedIssue", acked["resourceType"])


def resources_of(doc):
    yield doc
    for e in doc.get("entry", []) if doc.get("resourceType") == "Bundle" else []:
        if "resource" in e:
            yield from resources_of(e["resource"])


invalid, count = [], 0
for doc in answered:
    for r in resources_of(doc):
        count += 1
        try:
            # strict=True: a structural problem raises FHIRValidationError.
            obj = FHIRElementFactory.instantiate(r["resourceType"], r, True)
            must(type(obj).__name__ == r["resourceType"], f"no model for {r['resourceType']}")
        except Exception as e:  # noqa: BLE001 - each invalid resource is reported
            invalid.append({"resourceType": r["resourceType"], "id": r.get("id"), "error": str(e)[:500]})

json.dump({"steps": steps, "invalid": invalid, "resources": count}, sys.stdout)
sys.exit(0 if all(s["ok"] for s in steps) and not invalid else 1)
