"""Re-execution speed: a recorded trace re-executed unchanged, timed in
phases (load, model, engine, tables, write), best of --repeat.

    python bench/whatif_speed.py TRACE [--repeat 3] [--change '{"vcpus": 4}']

A trace of a million records: ``kvmscope run pio-storm --vcpus 2 -n 250000
--lossless -o DIR`` (500,000 exits and 500,000 acquisitions).
"""
import argparse
import json
import os
import sys
import tempfile
import time


def once(path, change, out):
    from kvmscope.analysis import Trace, whatif
    from kvmscope.analysis import reexec_engine as engine
    from kvmscope.analysis import reexec_model as model
    t = {}
    t0 = time.perf_counter()
    trace = Trace.load(path)
    trace.exits, trace.locks                    # to pandas: part of loading
    t["load"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    m = model.build(trace)
    t["model"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    eng = engine.run(m, engine.Changes(**change))
    t["engine"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    tables = engine.tables(eng)
    pred = Trace.from_arrow(tables, engine.predicted_meta(eng, trace, tables))
    t["tables"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    whatif.write(pred, out, force=True)
    t["write"] = time.perf_counter() - t0
    t["total"] = sum(t.values())
    return trace.num_records, t


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("trace")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--change", default="{}", help="what-if changes as JSON")
    a = p.parse_args(argv)
    change = json.loads(a.change)
    best = None
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(a.repeat):
            n, t = once(a.trace, change, os.path.join(tmp, "out"))
            if best is None or t["total"] < best["total"]:
                best = t
    print(f"{a.trace}: {n:,} records, changes {change or 'none'}; best of {a.repeat}")
    for k, v in best.items():
        print(f"  {k:7s} {v:6.2f} s")
    print(f"  {n / best['total'] / 1e6:.2f} M records/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
