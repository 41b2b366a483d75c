"""Scale benchmark of request paths (kvmscope.analysis.paths): the block and
timer paths of a large trace, against pyarrow alone reading and sorting it.

    python bench/paths_scale.py                       # the 10M-lock-record trace
    python bench/paths_scale.py --records 1000000 --repeat 3
    python bench/paths_scale.py --trace traces/mixed-2vcpu --repeat 5
    python bench/paths_scale.py --tile traces/mixed-2vcpu --out /tmp/tiled   # real requests

The trace is bench/analysis_scale.py's synthetic one (the same generator,
arguments and directory, reused when it matches), or with ``--tile`` a
recording repeated in time to the same number of lock records, whose
requests are real (the synthetic trace's few are: its AIO requests are not
queued from block-device exits).  Each phase runs in a
fresh process, timed from inside after imports, best of ``--repeat`` runs
taken in turns with the other phase:
``baseline`` is analysis_scale's (pyarrow reads every table, sorts locks by
(lock, acquired) and exits by (thread, exit)); ``paths`` loads the trace
and builds both kinds of path and their per-stage summaries, from a cold
start as ``kvmscope path`` does.  Target: paths within 2x the baseline.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import analysis_scale  # noqa: E402  (the trace generator and the baseline)

PHASES = {
    "baseline": "pyarrow read + sort (baseline)",
    "paths": "load + block and timer paths + summaries",
}


def tile_trace(src, out, records):
    """Write *out*: the recording *src* repeated, each copy shifted in time
    after the one before, until it has at least *records* lock records:
    a large trace whose requests are real ones (every stage matches).
    Returns the generation time, or None when *out* already holds it."""
    import math
    import pyarrow as pa
    import pyarrow.compute as pc
    from kvmscope.analysis import TABLES, Trace
    from kvmscope.analysis.synth import write_trace
    try:
        with open(os.path.join(out, "meta.json")) as f:
            cfg = json.load(f)["config"]
        if cfg.get("tiled") == [os.path.abspath(src), records]:
            return None
    except (OSError, ValueError, KeyError):
        pass
    t0 = time.perf_counter()
    t = Trace.load(src)
    copies = math.ceil(records / max(t.arrow("locks").num_rows, 1))
    span = t.end_ns - t.start_ns + 1_000_000
    tables = {"threads": t.arrow("threads")}
    for name in TABLES:
        if name == "threads":
            continue
        table = t.arrow(name).unify_dictionaries().combine_chunks()
        step = {"req": table.num_rows, "iter": table.num_rows}
        parts = []
        for i in range(copies):                 # a loop over copies
            cols = []
            for col in table.column_names:
                c = table.column(col)
                if col.endswith("_ns") and col != "timeout_ns":
                    c = pc.add(c, pa.scalar(i * span, c.type))
                elif col in step and name in ("aio", "loop"):
                    c = pc.add(c, pa.scalar(i * step[col], c.type))
                cols.append(c)
            parts.append(pa.Table.from_arrays(cols, schema=table.schema))
        tables[name] = pa.concat_tables(parts)
    meta = dict(t.meta)
    meta.update(config=dict(meta.get("config") or {}, tiled=[os.path.abspath(src), records]),
                start_ns=t.start_ns, end_ns=t.start_ns + copies * span, records={},
                tables={n: tables[n].num_rows for n in tables if n != "threads"})
    write_trace(out, meta=meta, **tables)
    return time.perf_counter() - t0


def run_phase(phase, path):
    """Run one phase in this process; returns (seconds, facts)."""
    if phase == "baseline":
        return analysis_scale.run_phase("baseline", path), {}
    from kvmscope.analysis import Trace, paths
    t0 = time.perf_counter()
    trace = Trace.load(path)
    facts = {}
    for kind in paths.KINDS:
        if paths.missing_tables(trace, kind)[:1]:
            continue
        p = paths.request_paths(trace, kind)
        paths.summary(p)
        facts[kind] = [len(p), int(p["matched"].sum())]
    return time.perf_counter() - t0, facts


def child(phase, path):
    seconds, facts = run_phase(phase, path)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mib": peak, "facts": facts}))


def measure_once(phase, path):
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--phase", phase,
         "--trace", path], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(path, repeat):
    """Best run of each phase; the phases alternate, so that both see the
    same load on a shared machine."""
    best = {}
    for _ in range(repeat):
        for phase in PHASES:
            res = measure_once(phase, path)
            if phase not in best or res["seconds"] < best[phase]["seconds"]:
                best[phase] = res
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=10_000_000,
                    help="lock records of the synthetic trace (default 10,000,000)")
    ap.add_argument("--threads", type=int, default=4,
                    help="threads taking the BQL: main + vCPUs (default 4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per phase, best kept (default 1)")
    ap.add_argument("--out", default=os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "out", "analysis_scale"),
        help="synthetic trace directory, shared with analysis_scale.py")
    ap.add_argument("--trace", help="time this trace instead of the synthetic one")
    ap.add_argument("--tile", metavar="RECORDING",
                    help="time RECORDING repeated in time to --records lock records "
                         "(written to --out): real requests, every stage matched")
    ap.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.phase:
        child(args.phase, args.trace)
        return 0

    path = args.trace
    if path is None:
        path = args.out
        if args.tile:
            gen = tile_trace(args.tile, path, args.records)
        else:
            gen = analysis_scale.ensure_trace(path, args.records, args.threads, args.seed)
        print(f"trace: {path}: " + ("reused" if gen is None else f"generated in {gen:.1f} s"))
    from kvmscope.analysis import Trace
    counts = {n: t.num_rows for n, t in Trace.load(path)._tables.items() if n != "threads"}
    n = sum(counts.values())
    print(f"records: {n:,} ({counts['locks']:,} locks, {counts['exits']:,} exits, "
          f"{counts['aio']:,} AIO requests, {counts['timers']:,} timer firings)")
    res = measure(path, args.repeat)
    base = res["baseline"]["seconds"]
    print(f"{'phase':42} {'seconds':>8} {'records/s':>13} {'x base':>7} {'peak RSS':>10}")
    for p, label in PHASES.items():
        s = res[p]["seconds"]
        print(f"{label:42} {s:8.2f} {n / s:13,.0f} {s / base:7.2f} "
              f"{res[p]['peak_mib']:7,.0f} MiB")
    for kind, (total, matched) in res["paths"]["facts"].items():
        print(f"{kind} paths: {total:,}, every stage matched in {matched:,}")
    import pyarrow as pa
    ratio = res["paths"]["seconds"] / base
    print(f"paths / baseline: {ratio:.2f}x (target 2x); best of {args.repeat}; "
          f"pyarrow {pa.__version__}, python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    return 0 if ratio <= 2 else 1


if __name__ == "__main__":
    sys.exit(main())
