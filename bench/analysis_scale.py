"""Scale benchmark of kvmscope.analysis: load, replay and report on a large
synthetic trace, against pyarrow alone reading and sorting the same data.

    python bench/analysis_scale.py                   # 10 million lock records
    python bench/analysis_scale.py --records 1000000 --repeat 3

Each phase runs in a fresh process (as ``kvmscope report`` would), timed from
inside after imports; with ``--repeat`` the best run is kept.  Prints
records/s per phase, the ratio to the pyarrow baseline (targets: the full
report within 3x; wait anatomy, after loading, within 2x) and each phase's
peak resident memory (``ru_maxrss``).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

PHASES = {
    "baseline": "pyarrow read + sort (baseline)",
    "load": "load + to pandas (all tables)",
    "replay": "replay (ownership + hand-offs + check)",
    "anatomy": "wait anatomy (per acquisition + detail)",
    "caused": "waiting caused (anatomy + per call site)",
    "fairness": "fairness + ping-pong + convoys",
    "report": "full report, cold (load + all sections)",
}


def _baseline(path):
    """pyarrow alone: read every table, sort locks by (lock, acquired_ns)
    and exits by (thread, exit_ns): the least any replay has to do."""
    import pyarrow.ipc as ipc
    from kvmscope.analysis import TABLES
    tables = {}
    for name in TABLES:
        f = os.path.join(path, name + ".arrows")
        if os.path.exists(f):
            with ipc.open_stream(f) as r:
                tables[name] = r.read_all()
    # Arrow cannot sort dictionaries with other keys: sort their indices.
    locks = tables["locks"].unify_dictionaries().combine_chunks()
    locks = locks.append_column("lock_code",
                                locks.column("lock").chunk(0).indices)
    locks.sort_by([("lock_code", "ascending"), ("acquired_ns", "ascending")])
    tables["exits"].sort_by([("thread", "ascending"),
                             ("exit_ns", "ascending")])


def run_phase(phase, path):
    """Run one phase in this process; returns its wall time in seconds."""
    from kvmscope.analysis import TABLES, Trace, report
    if phase == "baseline":
        t0 = time.perf_counter()
        _baseline(path)
        return time.perf_counter() - t0
    if phase == "load":
        t0 = time.perf_counter()
        trace = Trace.load(path)
        for name in TABLES:
            trace.frame(name)
        return time.perf_counter() - t0
    if phase == "replay":
        trace = Trace.load(path)
        trace.locks, trace.exits, trace.loop          # not timed
        t0 = time.perf_counter()
        trace.lock_intervals()
        trace.handoffs()
        trace.check()
        return time.perf_counter() - t0
    if phase in ("anatomy", "caused", "fairness"):
        trace = Trace.load(path)
        trace.locks                                    # not timed: loading
        t0 = time.perf_counter()
        if phase == "anatomy":
            trace.wait_anatomy()
            trace.wait_anatomy_detail()
        elif phase == "caused":
            trace.caused()
        else:
            trace.fairness()
            trace.pingpong()
            trace.convoys()
        return time.perf_counter() - t0
    if phase == "report":
        t0 = time.perf_counter()
        trace = Trace.load(path)
        report.render(trace, report.build(trace), "text", top=20)
        return time.perf_counter() - t0
    raise ValueError(phase)


def child(phase, path):
    seconds = run_phase(phase, path)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mib": peak}))


def measure(phase, path, repeat):
    best = None
    for _ in range(repeat):
        out = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--phase", phase,
             "--out", path], check=True, capture_output=True, text=True)
        res = json.loads(out.stdout.strip().splitlines()[-1])
        if best is None or res["seconds"] < best["seconds"]:
            best = res
    return best


def ensure_trace(path, records, threads, seed):
    """Generate the trace unless *path* already holds the same one; returns
    the generation time, or None when reused."""
    try:
        with open(os.path.join(path, "meta.json")) as f:
            cfg = json.load(f)["config"]
        if (cfg["n_lock_records"], cfg["vcpus"], cfg["seed"]) == \
                (records, threads - 1, seed):
            return None
    except (OSError, ValueError, KeyError):
        pass
    from kvmscope.analysis.synth import make_trace
    t0 = time.perf_counter()
    make_trace(path, records, threads=threads, seed=seed)
    return time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=10_000_000,
                    help="lock records (default 10,000,000)")
    ap.add_argument("--threads", type=int, default=4,
                    help="threads taking the BQL: main + vCPUs (default 4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per phase, best kept (default 1)")
    ap.add_argument("--out", default=os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "out", "analysis_scale"),
        help="trace directory, reused when it matches (default bench/out/)")
    ap.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.phase:
        child(args.phase, args.out)
        return 0

    gen = ensure_trace(args.out, args.records, args.threads, args.seed)
    import pyarrow as pa
    from kvmscope.analysis import Trace
    size = sum(os.path.getsize(os.path.join(args.out, f))
               for f in os.listdir(args.out))
    counts = {n: t.num_rows for n, t in Trace.load(args.out)._tables.items()
              if n != "threads"}
    n = sum(counts.values())
    print(f"trace: {args.out}: {size / 2**20:.0f} MiB, "
          + ("reused" if gen is None else f"generated in {gen:.1f} s"))
    print(f"records: {n:,} ({counts['locks']:,} locks, {counts['exits']:,} "
          f"exits, {n - counts['locks'] - counts['exits']:,} other)")
    res = {p: measure(p, args.out, args.repeat) for p in PHASES}
    base = res["baseline"]["seconds"]
    print(f"{'phase':42} {'seconds':>8} {'records/s':>13} {'x base':>7} "
          f"{'peak RSS':>10}")
    for p, label in PHASES.items():
        s = res[p]["seconds"]
        print(f"{label:42} {s:8.2f} {n / s:13,.0f} {s / base:7.2f} "
              f"{res[p]['peak_mib']:7,.0f} MiB")
    ratio = res["report"]["seconds"] / base
    anatomy = res["anatomy"]["seconds"] / base
    print(f"full report / baseline: {ratio:.2f}x (target 3x); wait anatomy / baseline: "
          f"{anatomy:.2f}x (target 2x); best of {args.repeat}; pyarrow {pa.__version__}, "
          f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    return 0 if ratio <= 3 and anatomy <= 2 else 1


if __name__ == "__main__":
    sys.exit(main())
