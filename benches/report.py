"""Combines the raw outputs of benches/run into results/<name>.json and prints the table.

Each results file holds the machine, the date, the commit, the command, every side's raw
figures, the ratios and the targets. In smoke mode no target is judged.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys

TARGETS = {
    "p1_vs_fhir_resources": 25.0,   # carebridge resources/s ÷ fhir.resources resources/s (issue 17)
    "p1_vs_ajv": 4.0,               # carebridge resources/s ÷ ajv resources/s (issue 17)
    "p1_batch_seconds": 0.4,        # 100 patients validated as one batch (issue 17)
    "p2_sqlite_resources_per_s": 5000.0,
    "p2_half_load_p99_ms": 100.0,
    # issue 17, item 4: the gateway against the durable-write floor measured in the same run
    "p2_sqlite_of_floor": 0.5,          # best gateway rate ÷ best floor rate (SQLite)
    "p2_sqlite_2_over_1": 1.3,          # 2-client rate ÷ 1-client rate (SQLite)
    "p2_sqlite_half_p99_over_p50": 2.0,  # p99 ÷ p50 per Bundle at half load (SQLite)
    "p2_postgres_4_of_floor": 0.5,      # 4-client gateway rate ÷ best floor rate (PostgreSQL)
    "p4_of_direct": 0.95,               # delivery of a backlog ÷ the direct client's rate (issue 17)
}


def sh(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def machine():
    model = None
    for line in (sh("lscpu") or "").splitlines():
        if line.startswith("Model name:"):
            model = line.split(":", 1)[1].strip()
    mem = None
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
            mem = f"{kb / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    dirty = bool(sh("git", "status", "--porcelain", "--untracked-files=no"))
    return {
        "nproc": int(sh("nproc") or 0),
        "cpu": model,
        "memory": mem,
        "kernel": platform.release(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": (sh("git", "rev-parse", "--short", "HEAD") or "?") + ("+dirty" if dirty else ""),
        "rustc": sh("rustc", "--version"),
        "python": sys.version.split()[0],
        "node": sh("node", "--version"),
        "postgres": sh("psql", "--version"),
    }


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def verdict(ok, smoke):
    if smoke:
        return "(smoke: not judged)"
    return "met" if ok else "NOT MET"


def fmt(x, digits=0):
    if x is None:
        return "-"
    return f"{x:,.{digits}f}"


def p1(work, smoke):
    corpus = load(os.path.join(work, "p1-corpus.json")) or {}
    sides = {}
    for key, name in [("carebridge", "p1-carebridge.json"), ("fhir.resources", "p1-fhir-resources.json"),
                      ("ajv", "p1-ajv.json"), ("asymmetrik-wrapper", "p1-asymmetrik.json")]:
        r = load(os.path.join(work, name))
        if r is not None:
            sides[key] = r
    cb = sides.get("carebridge")
    ratios = {}
    if cb:
        for key, r in sides.items():
            ratios[key] = cb["resources_per_s"] / r["resources_per_s"]
    batch = cb["batch"] if cb else None
    targets = {
        "vs_fhir_resources": {"target": f">= {TARGETS['p1_vs_fhir_resources']:g}x",
                              "measured": ratios.get("fhir.resources"),
                              "verdict": verdict((ratios.get("fhir.resources") or 0) >= TARGETS["p1_vs_fhir_resources"], smoke)},
        "vs_ajv": {"target": f">= {TARGETS['p1_vs_ajv']:g}x", "measured": ratios.get("ajv"),
                   "verdict": verdict((ratios.get("ajv") or 0) >= TARGETS["p1_vs_ajv"], smoke)},
        "batch_100_patients": {"target": f"< {TARGETS['p1_batch_seconds']:g} s",
                               "measured": batch and batch["seconds"],
                               "verdict": verdict(bool(batch) and batch["seconds"] < TARGETS["p1_batch_seconds"]
                                                  and batch["patients"] >= 100, smoke)},
    }
    lines = []
    lines.append("(resources/s: median of the timed passes; ratios from the medians)")
    lines.append(f"P1 structural validation, parse included, one core (pinned with taskset); corpus: "
                 f"{corpus.get('resources')} resources ({corpus.get('examples')} official examples + "
                 f"{corpus.get('synthea')} Synthea), {(corpus.get('bytes') or 0) / 1e6:.1f} MB NDJSON")
    lines.append(f"  {'side':<22} {'accepted':>9} {'rejected':>9} {'resources/s':>12} {'best pass':>10} "
                 f"{'MB/s':>7} {'carebridge ×':>13}  target")
    for key, r in sides.items():
        tgt = ""
        if key == "fhir.resources":
            tgt = f">= {TARGETS['p1_vs_fhir_resources']:g}x: {targets['vs_fhir_resources']['verdict']}"
        elif key == "ajv":
            tgt = f">= {TARGETS['p1_vs_ajv']:g}x: {targets['vs_ajv']['verdict']}"
        elif key == "asymmetrik-wrapper":
            tgt = "(information)"
        best = r["resources"] / min(r["passes"])
        lines.append(f"  {key:<22} {r['accepted']:>9} {r['rejected']:>9} {fmt(r['resources_per_s']):>12} "
                     f"{fmt(best):>10} {r['bytes_per_s'] / 1e6:>7.2f} {ratios.get(key, 0):>12.1f}x  {tgt}")
    if batch:
        lines.append(f"  100-patient batch: {batch['patients']} Synthea bundles as on disk ({batch['resources']} "
                     f"resources, {batch['bytes'] / 1e6:.0f} MB), parse + structural of each Bundle: "
                     f"{batch['seconds']:.3f} s one thread (target < {TARGETS['p1_batch_seconds']:g} s: "
                     f"{targets['batch_100_patients']['verdict']}); two threads inside each Bundle "
                     f"{batch.get('two_threads_within_bundle_seconds', float('nan')):.3f} s, two threads over "
                     f"the Bundles {batch.get('two_threads_over_bundles_seconds', float('nan')):.3f} s; "
                     f"as Gateway::bundle does it (the owned Value, the Bundle, then every entry's profile "
                     f"rules): {batch['ingest_path_seconds']:.3f} s")
    for key, r in sides.items():
        if r["rejected"]:
            lines.append(f"  {key} rejected {r['rejected']}: " + "; ".join(
                json.dumps(x)[:200] for x in r["rejects"][:3]))
    return {"corpus": corpus, "sides": sides, "ratios_carebridge_over": ratios, "targets": targets}, lines


def cpu_cols(s):
    return " / ".join(f"{s.get(k, float('nan')):.2f}" for k in
                      ["server_cpu_cores", "client_cpu_cores", "machine_busy_cores", "machine_iowait_cores"])


def p2(work, smoke):
    out = {}
    lines = []
    for backend in ["sqlite", "postgres"]:
        r = load(os.path.join(work, f"p2-{backend}.json"))
        if r is None:
            continue
        out[backend] = r
        if "skipped" in r:
            lines.append(f"P2 {backend}: skipped ({r['skipped']})")
            continue
        lines.append(f"P2 push ingest over loopback, {backend}: {r['database']}; transaction Bundles of "
                     f"{r['patients_in_rotation']} Synthea patients (mean {r['mean_entries_per_bundle']:.0f} "
                     f"entries), fresh ids per copy")
        lines.append(f"  {'clients':>8} {'bundles':>8} {'resources/s':>12} {'bundles/s':>10} {'p50 ms':>8} "
                     f"{'p99 ms':>8} {'max ms':>8} {'non-200':>8}   CPU cores: server / client / machine busy / iowait")
        for s in r["closed_loop"]:
            non200 = s["bundles"] - s["bundles_ok"]
            lines.append(f"  {s['clients']:>8} {s['bundles']:>8} {fmt(s['resources_per_s']):>12} "
                         f"{s['bundles_per_s']:>10.2f} {s['p50_ms']:>8.0f} {s['p99_ms']:>8.0f} {s['max_ms']:>8.0f} "
                         f"{non200:>8}   {cpu_cols(s)}")
        h = r["half_load"]
        non200 = h["bundles"] - h["bundles_ok"]
        lines.append(f"  half load: {h['bundles']} bundles offered at {h['target_bundles_per_s']:.2f}/s "
                     f"(≈{fmt(h['target_resources_per_s'])} resources/s): achieved {fmt(h['resources_per_s'])} "
                     f"resources/s, p50 {h['p50_ms']:.0f} ms, p99 {h['p99_ms']:.0f} ms, max {h['max_ms']:.0f} ms, "
                     f"non-200 {non200}; CPU {cpu_cols(h)}")
        lines.append(f"  store rows after the run: {r.get('store_rows')}; resources answered 2xx: "
                     f"{r['resources_answered_2xx']}; server log: {r['server_log']['errors']} errors, "
                     f"{r['server_log']['warnings']} warnings; start-up {r['server_startup_seconds']:.2f} s")
        if backend == "sqlite":
            best = r["best_resources_per_s"]
            r["targets"] = {
                "resources_per_s": {"target": ">= 5000 resources/s", "measured": best,
                                    "verdict": verdict(best >= TARGETS["p2_sqlite_resources_per_s"], smoke)},
                "half_load_p99_ms": {"target": "< 100 ms at half the max load", "measured": h["p99_ms"],
                                     "verdict": verdict(h["p99_ms"] < TARGETS["p2_half_load_p99_ms"], smoke)},
            }
            lines.append(f"  target >= 5,000 resources/s (SQLite): best {fmt(best)} -> "
                         f"{r['targets']['resources_per_s']['verdict']}; p99 < 100 ms at half load: "
                         f"{h['p99_ms']:.0f} ms -> {r['targets']['half_load_p99_ms']['verdict']}")
        if "floor" in r:
            lines.extend(p2_floor_lines(r, backend, smoke))
        if "postgres_settings" in r:
            lines.append(f"  PostgreSQL: {r['postgres_settings']}")
        for key in ["diagnosis_pg_settings", "diagnosis_server_wrap"]:
            if key in r:
                lines.append(f"  NOTE: diagnosis override in effect, not a reference figure: {key} = {r[key]}")
        lines.append(f"  detection and outbox writes: {r['detection_and_outbox']}")
    m = load(os.path.join(work, "p2-medplum.json"))
    if m is not None:
        out["medplum"] = m
        lines.extend(p2_medplum_lines(m, out))
    return out, lines


def p2_floor_lines(r, backend, smoke):
    """The durable-write floor's table, the gateway as ratios of it, and issue 17's checks."""
    f = r["floor"]
    lines = [f"  durable-write floor ({backend}): {f['database']}; connection: {f.get('connection_settings')}",
             f"  {'clients':>8} {'bundles':>8} {'resources/s':>12} {'bundles/s':>10} {'p50 ms':>8} "
             f"{'p99 ms':>8} {'max ms':>8}   gateway ÷ floor (same clients)   gateway ÷ floor best   "
             f"CPU cores: floor / machine busy / iowait"]
    ratios = {x["clients"]: x for x in r["ratios"]["per_clients"]}
    for s in f["closed_loop"]:
        x = ratios.get(s["clients"], {})
        lines.append(f"  {s['clients']:>8} {s['bundles']:>8} {fmt(s['resources_per_s']):>12} "
                     f"{s['bundles_per_s']:>10.2f} {s['p50_ms']:>8.1f} {s['p99_ms']:>8.1f} {s['max_ms']:>8.1f}   "
                     f"{x.get('of_floor_same_clients', float('nan')):>30.3f}   "
                     f"{x.get('of_floor_best', float('nan')):>20.3f}   "
                     + " / ".join(f"{s.get(k, float('nan')):.2f}" for k in
                                  ["floor_cpu_cores", "machine_busy_cores", "machine_iowait_cores"]))
    lines.append(f"  floor best {fmt(f['best_resources_per_s'])} resources/s; gateway best ÷ floor best "
                 f"{r['ratios']['gateway_best_of_floor_best']:.3f}; floor rows after the run: {f.get('store_rows')}")
    lines.extend(p2_round_lines(r))
    r.setdefault("targets", {})
    for key, (target, measured, ok) in p2_median_checks(r["round_medians"], backend).items():
        r["targets"][key] = {"target": target, "measured": measured, "verdict": verdict(ok, smoke)}
        shown = ", ".join(fmt(x) for x in measured) if isinstance(measured, list) else f"{measured:.3f}"
        lines.append(f"  issue 17: {key} {target}: {shown} -> {r['targets'][key]['verdict']}")
    return lines


def p2_round_lines(r):
    """Every round's issue-17 figures, one line each, and their medians."""
    def show(x, digits=3):
        return "-" if x is None else f"{x:.{digits}f}"

    def rates(d):
        return " / ".join(fmt(v) if v is not None else "-" for v in d.values())

    rounds = r["rounds"]
    counts = "/".join(rounds[0]["gateway_resources_per_s"].keys())
    lines = [f"  {len(rounds)} round{'s' if len(rounds) != 1 else ''}, each on fresh stores; issue 17's lines are the median over them "
             f"(the tables above are round 1's). Per round: gateway resources/s at {counts} clients | "
             f"floor | best ÷ floor best | 2 ÷ 1 | 4 ÷ floor best | half-load p50 / p99 ms, p99 ÷ p50"]
    for i, x in enumerate(rounds + [r["round_medians"]]):
        name = f"round {i + 1}" if i < len(rounds) else "median"
        half = (f"{show(x.get('half_load_p50_ms'), 0)} / {show(x.get('half_load_p99_ms'), 0)}, "
                if name != "median" else "")
        lines.append(f"  {name:>8}: {rates(x['gateway_resources_per_s'])} | {rates(x['floor_resources_per_s'])} | "
                     f"{show(x['best_of_floor_best'])} | {show(x['two_over_one_client'])} | "
                     f"{show(x['four_clients_of_floor_best'])} | {half}{show(x['half_load_p99_over_p50'])}")
    return lines


def p2_median_checks(m, backend):
    """Issue 17's checks on the medians over the rounds."""
    checks = {}
    if backend == "sqlite":
        q = m["best_of_floor_best"]
        checks["best_of_floor"] = (">= 0.5 of the floor's best (median of rounds)", q,
                                   q >= TARGETS["p2_sqlite_of_floor"])
        q = m["two_over_one_client"]
        if q is not None:
            checks["two_over_one_client"] = (">= 1.3x the 1-client rate (median of rounds)", q,
                                             q >= TARGETS["p2_sqlite_2_over_1"])
        q = m["half_load_p99_over_p50"]
        checks["half_load_p99_over_p50"] = ("<= 2x the p50 at half load (median of rounds)", q,
                                            q <= TARGETS["p2_sqlite_half_p99_over_p50"])
    else:
        q = m["four_clients_of_floor_best"]
        if q is not None:
            checks["four_clients_of_floor"] = (">= 0.5 of the floor's best (median of rounds)", q,
                                               q >= TARGETS["p2_postgres_4_of_floor"])
        rates = [m["gateway_resources_per_s"][c] for c in ("1", "2", "4") if c in m["gateway_resources_per_s"]]
        if len(rates) > 1:
            rising = all(a < b for a, b in zip(rates, rates[1:]))
            checks["rises_1_to_4_clients"] = ("rises over 1, 2, 4 clients (medians of rounds)", rates, rising)
    return checks


def p2_medplum_lines(m, out):
    """The Medplum peer's own transaction rate, and each backend's gateway as a ratio of it."""
    lines = [f"P2 peer: Medplum's router taking the same transaction Bundles ({m['peer']}); "
             f"{m['patients_in_rotation']} patients (mean {m['mean_entries_per_bundle']:.0f} entries); "
             f"warm-up statuses {m['warm_up_statuses']}",
             f"  {'clients':>8} {'bundles':>8} {'accepted':>8} {'entries':>8} {'201':>8} {'resources/s':>12} "
             f"{'bundles/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'peer p50':>9} {'peer CPU':>9}   refusals"]
    for s in m["closed_loop"]:
        lines.append(f"  {s['clients']:>8} {s['bundles']:>8} {s['bundles_ok']:>8} {s['resources']:>8} {s['created']:>8} "
                     f"{fmt(s['resources_per_s']):>12} "
                     f"{s['bundles_per_s']:>10.2f} {s['p50_ms']:>8.0f} {s['p99_ms']:>8.0f} "
                     f"{s.get('peer_own_p50_ms', float('nan')):>9.0f} {s.get('peer_cpu_cores', float('nan')):>9.2f}   "
                     f"{s.get('refusals') or 'none'}")
    best = m["best_resources_per_s"]
    ratios = {}
    for backend in ["sqlite", "postgres"]:
        r = out.get(backend)
        if r and "best_resources_per_s" in r and best > 0:
            ratios[backend] = r["best_resources_per_s"] / best
    m["ratios_gateway_best_over_medplum_best"] = ratios
    lines.append(f"  Medplum best {fmt(best)} resources/s (in memory, no disk); gateway best ÷ Medplum best: "
                 + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))
    return lines


def p4(work, smoke):
    """P4: delivery rate to one Medplum peer next to that peer's own POST rate (information: no
    target is set for it)."""
    out = {}
    lines = []
    for backend in ["sqlite", "postgres"]:
        r = load(os.path.join(work, f"p4-{backend}.json"))
        if r is None:
            continue
        out[backend] = r
        if "skipped" in r:
            lines.append(f"P4 {backend}: skipped ({r['skipped']})")
            continue
        gw = r.get("reference") or r.get("profile")
        direct = r.get("direct") or {}
        ine, plain, put = direct.get("if_none_exist"), direct.get("plain"), direct.get("put_derived_id")
        lines.append(f"P4 delivery to one Medplum peer, {backend}: {gw['database']}; {r['n']} Conditions pushed by gp "
                     f"in transaction Bundles of {r['bundle_size']}, one client ({gw['pass']} pass"
                     f"{', gateway log on: a diagnosis figure' if gw['pass'] == 'profile' else ''})")
        d = gw["delivery"]
        lines.append(f"  gateway: {fmt(d['per_s_first_to_last'], 1)} deliveries/s first->last delivery, "
                     f"{fmt(d['per_s_end_to_end'], 1)}/s end to end (first push -> last delivery, "
                     f"{d['last_delivery_after_first_push_s']:.1f} s); push {gw['push']['seconds']:.1f} s, "
                     f"{d['delivered_during_push']} delivered during it; peer time per POST {d['server_ms_mean']:.1f} ms; "
                     f"load {gw['loadavg_before']:.2f} -> {gw['loadavg_after']:.2f}")
        c = d["cpu_after_push"]
        lines.append(f"  CPU after the push (cores): gateway {c['gateway_cpu_cores']:.2f}, peer {c['peer_cpu_cores']:.2f}, "
                     f"postgres (all; '-' when some exited) {fmt(c['postgres_cpu_cores'] if (c['postgres_cpu_cores'] or 0) >= 0 else None, 2)}, machine busy {c['machine_busy_cores']:.2f}, "
                     f"iowait {c['machine_iowait_cores']:.2f}; gateway CPU per delivery "
                     f"{1000 * c['gateway_cpu_seconds'] / max(1, r['n'] - d['delivered_during_push']):.2f} ms")
        for name, x in [("POST with If-None-Exist (as the gateway)", ine), ("plain POST", plain),
                        ("PUT with an id derived from the source identifier", put)]:
            if x:
                ratio = d["per_s_first_to_last"] / x["per_s_first_to_last"]
                lines.append(f"  direct client, {name}: {fmt(x['per_s_first_to_last'], 1)}/s first->last, mean latency "
                             f"{x['latency_ms']['mean']:.1f} ms (peer {x['server_ms_mean']:.1f} ms); gateway / direct = "
                             f"{ratio:.2f}; load {x['loadavg_before']:.2f} -> {x['loadavg_after']:.2f}")
        bl = r.get("backlog")
        if bl:
            b = bl["delivery"]
            line = (f"  backlog pass (all {r['n']} pushed with deliveries off, then the gateway restarted on the "
                    f"same store with them on, {bl.get('restart_seconds') or 0:.2f} s): {fmt(b['per_s_first_to_last'], 1)} "
                    f"deliveries/s first->last; peer time per POST {b['server_ms_mean']:.1f} ms")
            lines.append(line)
            rounds = bl.get("rounds") or []
            for i, rd in enumerate(rounds):
                lines.append(f"    round {i + 1}: backlog {fmt(rd['backlog_per_s'], 1)}/s, then direct (If-None-Exist, "
                             f"fresh peer) {fmt(rd['direct_if_none_exist_per_s'], 1)}/s: "
                             f"{rd['backlog_per_s'] / rd['direct_if_none_exist_per_s']:.3f}")
            if rounds:
                q = bl["of_direct_over_rounds"]
                ok = q >= TARGETS["p4_of_direct"]
                bl["verdict"] = verdict(ok, smoke)
                lines.append(f"  issue 17: backlog ÷ direct client (POST with If-None-Exist, the same bodies, each alone on "
                             f"the machine; sums over {len(rounds)} alternating rounds) >= {TARGETS['p4_of_direct']}: "
                             f"{q:.3f} -> {bl['verdict']}")
                if bl.get("median_round_ratio") is not None:
                    lines.append(f"  (median of the {len(rounds)} rounds' own ratios: {bl['median_round_ratio']:.3f})")
        if gw.get("bodies_identical_to_sent") is not None:
            lines.append(f"  bodies read back = what the gateway sent (SHA-256 of delivered.hash): "
                         f"{gw['bodies_identical_to_sent']}/{r['n']}")
        # Per window of deliveries (the server held `from`..`to` Conditions when they arrived). "own ms":
        # milliseconds per delivery (1000 / rate) minus the peer's own time per request: what the
        # gateway (or the direct client) adds, independent of how fast the peer was at that moment.
        lines.append(f"  {'server held':>13} | {'gateway/s':>9} {'peer ms':>7} {'own ms':>6} | {'INE/s':>7} {'peer ms':>7} "
                     f"{'own ms':>6} | {'plain/s':>7} {'put/s':>7}")
        gws = d["windows"]
        ines = (ine or {}).get("windows") or []
        plains = (plain or {}).get("windows") or []
        puts = (put or {}).get("windows") or []

        def own(w):
            return 1000 / w["per_s"] - w["server_ms_mean"] if w.get("per_s") else None

        for i, w in enumerate(gws):
            iw = ines[i] if i < len(ines) else None
            lines.append(f"  {w['from']:>5}-{w['to']:<7} | {fmt(w['per_s'], 1):>9} {fmt(w['server_ms_mean'], 1):>7} "
                         f"{fmt(own(w), 1):>6} | {fmt(iw and iw['per_s'], 1):>7} {fmt(iw and iw['server_ms_mean'], 1):>7} "
                         f"{fmt(iw and own(iw), 1):>6} | {fmt(plains[i]['per_s'] if i < len(plains) else None, 0):>7} "
                         f"{fmt(puts[i]['per_s'] if i < len(puts) else None, 0):>7}")
        prof = (r.get("profile") or {}).get("breakdown") or {}
        if "all" in prof:
            a = prof["all"]
            lines.append(f"  where one delivery's time goes (profile pass, {a['deliveries']} deliveries after the last push, "
                         f"{a['ms_per_delivery']:.2f} ms each = {a['per_s']:.1f}/s; the worker is pipelined: a delivery is one "
                         f"request's start to the next's; statements counted without COMMIT):")
            lines.append(f"    HTTP {a['http_ms']:.2f} ms (peer {a['http_server_ms']:.2f}) | gap outside the request "
                         f"{a['gap_ms']:.2f} ms | statements in the cycle (of which in the gap): read tx "
                         f"{a['read_tx_db_ms']:.2f} ({a['read_tx_db_in_gap_ms']:.2f}; {a['read_tx_statements']:.0f} statements), "
                         f"write tx {a['write_tx_db_ms']:.2f} ({a['write_tx_db_in_gap_ms']:.2f}; {a['write_tx_statements']:.0f} statements), "
                         f"claims {a['claim_db_ms']:.2f} ({a['claim_db_in_gap_ms']:.2f}; {a['entries_per_claim']:.0f} entries each)")
            for w in prof.get("by_window", []):
                lines.append(f"    {w['window']:>11}: {w['ms_per_delivery']:6.2f} ms = HTTP {w['http_ms']:.2f} "
                             f"(peer {w['http_server_ms']:.2f}) + gap {w['gap_ms']:.2f}; read {w['read_tx_db_ms']:.2f}, "
                             f"write {w['write_tx_db_ms']:.2f}, claims {w['claim_db_ms']:.2f} in the cycle")
        log = gw.get("gateway_log") or {}
        lines.append(f"  gateway log: {log.get('errors')} errors, {log.get('warnings')} warnings")
        ds = r.get("dead_sector")
        if ds:
            ok = max(ds["cost_refused"], ds["cost_silent"]) < 0.10
            ds["verdict"] = "met" if ok else "not met"
            lines.append(f"  a dead sector ({ds['n']} Conditions to two healthy Medplum sectors; rate to both, first->last):")
            for run in ds["runs"]:
                lines.append(f"    {run['dead']:>8}: {fmt(run['healthy_per_s_first_to_last'], 1)}/s "
                             f"(hospital {fmt(run['per_target']['hospital']['per_s_first_to_last'], 1)}, municipality "
                             f"{fmt(run['per_target']['municipality']['per_s_first_to_last'], 1)}); dead target "
                             f"{run['dead_target']['entries']} entries, {run['dead_target']['attempts']} attempts; "
                             f"load {run['loadavg_before']:.2f}")
            for k, rd in enumerate(ds.get("rounds", []), 1):
                lines.append(f"    round {k}: refused {100 * rd['cost_refused']:.1f} %, silent {100 * rd['cost_silent']:.1f} % "
                             f"(baselines {fmt(rd['baselines_per_s'][0], 1)} and {fmt(rd['baselines_per_s'][1], 1)}/s)")
            lines.append(f"    cost, median of the rounds against each round's baselines: refused {100 * ds['cost_refused']:.1f} %, "
                         f"silent {100 * ds['cost_silent']:.1f} % (target < 10 %: {ds['verdict']})")
    return out, lines


def p3(work, smoke):
    """P3: detection latency for one patient, and how it changes with the stored patients."""
    r = load(os.path.join(work, "p3.json"))
    if r is None:
        return {}, []
    lines = [f"P3 fragmentation detection for one patient ({r['runtime']}; medication knowledge and "
             f"concept maps load in {r['knowledge_load_ms']:.0f} ms)"]

    def ms(x, scale=1.0):
        return f"{x['median'] * scale:.2f} / {x['p99'] * scale:.2f}"

    for name, p in r["patients"].items():
        shape = p["shape"]
        lines.append(f"  {name}: {p['source']}; {p['resources_stored']} resources stored "
                     f"({', '.join(f'{k} {v}' for k, v in p['by_sector'].items())}), detection reads "
                     f"{p['detection_records']} ({', '.join(f'{k} {v}' for k, v in p['detection_records_by_type'].items())}; "
                     f"active: {shape['medications_active']} medications, {shape['conditions_active']} conditions, "
                     f"{shape['care_plans_active']} plans); findings "
                     f"{', '.join(f'{k} {v}' for k, v in p['findings'].items()) or 'none'}")
        rows = [
            (f"detect::detect, pure ({p['pure_detect']['runs']} runs)", ms(p["pure_detect"], 1e-3), ""),
            (f"lifecycle::evaluate on the store ({p['evaluate']['runs']} runs)", ms(p["evaluate"], 1e-3), ""),
            ("  lifecycle::snapshot alone", ms(p["snapshot_read"], 1e-3), ""),
            ("  of it: 7 by_patient reads + parsing", ms(p["snapshot_rows_read_and_parsed"], 1e-3),
             f"(the rest: {p['snapshot_copy_lookups']} delivered-copy lookups)"),
        ]
        e = p["end_to_end"]
        for kind, what in [("quiet", "PUT, alerts unchanged"), ("alert", "PUT raising/closing an alert")]:
            on, off = e["detection_on"][kind], e["detection_off"][kind]
            rows.append((f"API {what}, detection on", ms(on), f"+{on['median'] - off['median']:.2f} ms median over off"))
            rows.append((f"API {what}, detection off", ms(off), ""))
        lines.append(f"    {'(median / p99, ms)':<50} {'':>16}")
        for label, fig, note in rows:
            lines.append(f"    {label:<50} {fig:>16}  {note}".rstrip())
        slow = sorted(p["pure_by_detector"].items(), key=lambda kv: -kv[1]["median"])[:3]
        lines.append("    slowest detectors alone (median ms): " + ", ".join(
            f"{k} {v['median'] / 1e3:.2f}" for k, v in slow))
        lines.append(f"    load average before: pure {p['loadavg_before_pure']}, end to end {p['loadavg_before_end_to_end']}")
    pop = r.get("population") or {}
    stages = pop.get("stages") or []
    if stages:
        lines.append("  as the store grows (background patients: re-identified Synthea copies, see benches/README.md); "
                     "median / p99 ms:")
        names = list(stages[0]["patients"].keys())
        lines.append(f"    {'stored patients':>15} {'resources':>10} {'db MB':>7} {'load/s':>8} | " + " | ".join(
            f"{n + ' evaluate':>26} {'PUT quiet':>14} {'PUT alert':>14}" for n in names))
        for st in stages:
            cells = []
            for n in names:
                x = st["patients"][n]
                e2e = x["end_to_end_detection_on"]
                cells.append(f"{ms(x['evaluate'], 1e-3):>26} {ms(e2e['quiet']):>14} {ms(e2e['alert']):>14}")
            lines.append(f"    {st['store']['gateway_patients']:>15} {st['store']['resources']:>10} "
                         f"{st['store']['db_bytes'] / 1e6:>7.0f} {fmt(st['load'].get('resources_per_s'), 0):>8} | " + " | ".join(cells))
        first, last = stages[0], stages[-1]
        targets = {}
        for n in names:
            a = first["patients"][n]["evaluate"]["median"]
            b = last["patients"][n]["evaluate"]["median"]
            targets[n] = {"evaluate_median_ms": b / 1e3, "growth": b / a,
                          "verdict_median_below_1_ms": "met" if b / 1e3 < 1 else "not met",
                          "verdict_growth_at_most_1_5": "met" if b / a <= 1.5 else "not met"}
            lines.append(f"  {n}: evaluate median {a / 1e3:.2f} ms at {first['store']['gateway_patients']} patients, "
                         f"{b / 1e3:.2f} ms at {last['store']['gateway_patients']}: x{b / a:.2f} (target <= 1.5: "
                         f"{targets[n]['verdict_growth_at_most_1_5']}); median < 1 ms: {targets[n]['verdict_median_below_1_ms']}")
        r["targets"] = targets
    return r, lines


def p5(work, smoke):
    """P5: start-up time and resident memory with the population stored."""
    r = load(os.path.join(work, "p5.json"))
    if r is None:
        return {}, []
    st = r["store"]
    m = r["memory"]
    pop, emp = r["startup_populated"], r["startup_empty"]
    startup_ok = pop["median_ready_s"] < 1.0
    rss_ok = (m["peak_rss_mb"] or 0) < 200
    r["targets"] = {"startup_below_1_s": "met" if startup_ok else "not met",
                    "rss_below_200_mb": "met" if rss_ok else "not met"}
    lines = [f"P5 footprint: carebridge serve on a store of {st['gateway_patients']} patients, {st['resources']} resources, "
             f"{st['db_bytes'] / 1e6:.0f} MB",
             f"  start-up (median of {len(pop['runs'])}): listening {pop['median_listening_s']:.3f} s, ready "
             f"{pop['median_ready_s']:.3f} s, CPU {pop['median_cpu_s']:.3f} s, RSS {pop['median_rss_mb']:.1f} MB "
             f"(target < 1 s: {r['targets']['startup_below_1_s']}); empty store: ready {emp['median_ready_s']:.3f} s, "
             f"first start with migrations {r['first_start_with_migrations_s']:.3f} s",
             f"  resident memory: {m['rss_after_start_mb']:.1f} MB after start, {m['rss_after_reads_mb']:.1f} MB after "
             f"{m['reads']} $total-plan reads ({m['reads_seconds']:.1f} s), {m['rss_after_writes_mb']:.1f} MB after "
             f"{m['writes']} writes ({m['writes_seconds']:.1f} s); peak {m['peak_rss_mb']:.1f} MB (target < 200 MB: "
             f"{r['targets']['rss_below_200_mb']})",
             f"  server log: {r['server_log']['errors']} errors, {r['server_log']['warnings']} warnings"]
    return r, lines


def p8(work, smoke):
    """P8: the cost of a treatment-relationship decision with the population stored."""
    r = load(os.path.join(work, "p8.json"))
    if r is None:
        return {}, []
    d = r["decisions"]
    worst = r["worst_decision_p99_us"]
    r["targets"] = {"relationship_check_below_1_ms": "met" if worst < 1000 else "not met"}
    lines = [f"P8 access: {r['sampled_patients']} patients sampled from a store of {r['store']['gateway_patients']} patients, "
             f"{r['runs']} decisions each"]
    for k, v in d.items():
        s = v["decision"]
        lines.append(f"  {k:<28} median {s['median']:.0f} µs, p99 {s['p99']:.0f} µs, max {s['max']:.0f} µs "
                     f"({v['granted']} granted)")
    rd = r["reads"]
    lines.append(f"  GET Patient/{{id}}: asserting system median {rd['asserted_system']['median']:.2f} ms p99 "
                 f"{rd['asserted_system']['p99']:.2f} ms; care-team member median {rd['care_team_member']['median']:.2f} ms "
                 f"p99 {rd['care_team_member']['p99']:.2f} ms")
    lines.append(f"  worst decision p99 {worst:.0f} µs (target < 1 ms: {r['targets']['relationship_check_below_1_ms']})")
    return r, lines


def p6(work, smoke):
    """P6: proofs on a large tree; the cost per audited write against the build before the tree."""
    proofs = load(os.path.join(work, "p6-proofs.json"))
    appends = {b: load(os.path.join(work, f"p6-append-{b}.json")) for b in ("sqlite", "postgres")}
    r = {"proofs": proofs, "append": appends}
    lines = []
    if proofs:
        i, c = proofs["inclusion_with_root"], proofs["consistency"]
        ok = i["p99_ms"] < 5.0 and c["p99_ms"] < 5.0
        r["targets"] = {"proofs_below_5_ms": verdict(ok, smoke)}
        lines += [f"P6 proofs on a tree of {proofs['leaves']:,} leaves ({proofs['stored_nodes_bytes'] / 1e6:.0f} MB of nodes, "
                  f"built in {proofs['build_secs']:.0f} s)",
                  f"  inclusion proof + root: p50 {i['p50_ms']:.2f} ms, p99 {i['p99_ms']:.2f} ms, max {i['max_ms']:.2f} ms "
                  f"({i['n']} random; at most {proofs['inclusion_proof_hashes_max']} hashes)",
                  f"  consistency proof: p50 {c['p50_ms']:.2f} ms, p99 {c['p99_ms']:.2f} ms, max {c['max_ms']:.2f} ms "
                  f"(target p99 < 5 ms: {r['targets']['proofs_below_5_ms']})"]
    for b, a in appends.items():
        if not a or "skipped" in a:
            if a:
                lines.append(f"P6 append, {b}: skipped ({a['skipped']})")
            continue
        ok = a["ratio"] <= 1.10
        r.setdefault("targets", {})[f"append_{b}_within_10_percent"] = verdict(ok, smoke)
        lines.append(f"P6 append, {b}: {a['current_median_ms']:.3f} ms per audited write with the tree, "
                     f"{a['baseline_median_ms']:.3f} ms before it (median of {a['rounds']} alternating rounds of "
                     f"{a['writes_per_round']} writes): ratio {a['ratio']:.3f} (target <= 1.10: {verdict(ok, smoke)}); "
                     f"best rounds {a.get('current_best_ms', 0):.3f} / {a.get('baseline_best_ms', 0):.3f} ms, "
                     f"ratio {a.get('ratio_best', 0):.3f}")
    return r, lines


def p9(work, smoke):
    """P9: the console's inbox and patient page, server-side."""
    r = load(os.path.join(work, "p9.json"))
    if r is None:
        return {}, []
    inbox, page = r["inbox_first_page"]["ms"], r["patient_page"]["ms"]
    r["targets"] = {
        "inbox_first_page_below_100_ms": "met" if inbox["median"] < 100 else "not met",
        "patient_page_below_100_ms": "met" if page["median"] < 100 else "not met",
    }
    lines = [f"P9 console: {r['open_alerts']} open alerts of {r['patients']} patients; a patient of "
             f"{r['records_of_the_patient']} records; {r['runs']} requests each",
             f"  GET /ui/inbox (first page): median {inbox['median']:.1f} ms, p90 {inbox['p90']:.1f} ms, "
             f"max {inbox['max']:.1f} ms (target < 100 ms: {r['targets']['inbox_first_page_below_100_ms']})",
             f"  GET /ui/patients/{{id}}: median {page['median']:.1f} ms, p90 {page['p90']:.1f} ms, "
             f"max {page['max']:.1f} ms (target < 100 ms: {r['targets']['patient_page_below_100_ms']})"]
    for key, what in [("inbox_first_page_low_severity_code", "GET /ui/inbox?code=unanswered-communication"),
                      ("core_inbox_page", "core: the inbox page alone"),
                      ("core_fhir_alert_search_all", "core: the FHIR DetectedIssue search of every alert")]:
        if key in r:
            x = r[key]["ms"]
            lines.append(f"  {what}: median {x['median']:.1f} ms, p90 {x['p90']:.1f} ms, max {x['max']:.1f} ms")
    return r, lines


def p10(work, smoke):
    """P10: IT staff's message browser and board, server-side."""
    r = load(os.path.join(work, "p10.json"))
    if r is None:
        return {}, []
    pages = r["pages"]
    browser = pages["by_resource_id"]
    r["targets"] = {
        "message_browser_below_100_ms": verdict(browser["median"] < 100 and pages["newest_page"]["median"] < 100, smoke),
    }
    lines = [f"P10 operations console: {r['outbox_entries']} outbox entries; {r['runs']} requests each"]
    for name, label in [("by_resource_id", "GET /ui/it/messages?resource=<id>"),
                        ("newest_page", "GET /ui/it/messages (newest 50)"),
                        ("type_and_state", "GET /ui/it/messages?type=&state="),
                        ("board", "GET /ui/it/board")]:
        p = pages[name]
        lines.append(f"  {label:<40} median {p['median']:.1f} ms, p90 {p['p90']:.1f} ms, max {p['max']:.1f} ms")
    c = r["core_browse_by_resource_id"]
    lines.append(f"  core browse_outbox by resource id: median {c['median']:.2f} ms, p99 {c['p99']:.2f} ms")
    lines.append(f"  (target: the message browser's page < 100 ms median: {r['targets']['message_browser_below_100_ms']})")
    return r, lines


def p11(work, smoke):
    """P11: the time-driven alert evaluation's cost per due item."""
    r = load(os.path.join(work, "p11.json"))
    if r is None:
        return {}, []
    d, idle = r["due"], r["idle_claim_ms"]
    per = d["per_item_ms"]
    # Within a minute of the due time: the worker looks every 15 s, so a replica has 45 s left.
    per_minute = 45_000 / per["median"] if per["median"] > 0 else float("inf")
    r["targets"] = {"due_items_per_replica_within_a_minute": round(per_minute)}
    lines = [f"P11 schedule: {r['patients']} patients falling due, claimed {r['batch']} per transaction "
             f"(load average {r.get('loadavg')})",
             f"  per due item: median {per['median']:.2f} ms, p90 {per['p90']:.2f} ms, max {per['max']:.2f} ms; "
             f"{d['items_per_second']:.0f} items/s ({d['items']} in {d['seconds']:.1f} s)",
             f"  a look with nothing due: median {idle['median']:.2f} ms, p99 {idle['p99']:.2f} ms",
             f"  -> about {round(per_minute)} due patients per replica within a minute of their time "
             f"(45 s after a 15 s look interval)"]
    return r, lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["full", "smoke"], required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--results", required=True)
    ap.add_argument("--command", required=True)
    ap.add_argument("--parts", default="p1 p2 p3 p4 p5 p6 p8 p9 p10 p11")
    ap.add_argument("--profile", default="bench")
    a = ap.parse_args()
    smoke = a.mode == "smoke"
    meta = {"mode": a.mode, "command": a.command, "cargo_profile": a.profile, "machine": machine()}
    m = meta["machine"]
    print()
    print(f"carebridge benchmarks ({a.mode}, cargo profile {a.profile}) — {m['date']}, commit {m['commit']}, {m['nproc']} cores "
          f"({m['cpu']}), {m['memory']}")
    loads = load(os.path.join(a.work, "loadavg.json")) or {}
    meta["loadavg_before_each_step"] = loads
    if loads:
        print("load average (1 min) before each step: " + ", ".join(f"{k} {v}" for k, v in loads.items()))
    for part, fn in [("p1", p1), ("p2", p2), ("p3", p3), ("p4", p4), ("p5", p5), ("p6", p6), ("p8", p8), ("p9", p9), ("p10", p10), ("p11", p11)]:
        if part not in a.parts.split():
            continue
        data, lines = fn(a.work, smoke)
        print()
        print("\n".join(lines))
        with open(os.path.join(a.results, f"{part}.json"), "w") as f:
            json.dump({**meta, part: data}, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
