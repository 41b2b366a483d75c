"""Fleet scale: per-call-site statistics and history over a store of many
large runs, with pandas in one process and on Dask.

    python bench/store_scale.py --runs 100 --records 1000000 --out /tmp/store100

Builds (once; --out is reused) a store of --runs runs of about --records
records each: one synthetic trace is generated and added with `Store.add`,
and the other runs are copies of its Parquet files under new run ids, start
times and labels (adding 100 runs of 1M records one by one takes minutes
and measures the add, not the analysis).  Then, each in a fresh process,
times `history.store_stats` (hold, every run) and `history.history` on:
pandas (one run after the other), Dask threads, Dask processes, and a
`distributed.LocalCluster` of 2 worker processes; and reports wall time and
peak memory (the process's max RSS; with the cluster, also each worker's).
"""
import argparse
import datetime
import json
import os
import resource
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def build(out, runs, records):
    import pyarrow.parquet as pq
    from kvmscope.analysis import Store
    from kvmscope.analysis.store import RUN_FILE, RUN_PREFIX
    from kvmscope.analysis.synth import make_trace
    if Store.is_store(out) and len(Store(out).run_ids()) >= runs:
        return
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.monotonic()
    src = out + ".src"
    shutil.rmtree(src, ignore_errors=True)
    # locks are about 60% of a synthetic trace's records
    make_trace(src, n_lock_records=int(records * 0.6), seed=1)
    s = Store(out, create=True)
    [first] = s.add(src, labels={"n": "0"})
    shutil.rmtree(src)
    row = pq.read_table(os.path.join(s.run_dir(first), RUN_FILE))
    start = row.column("start_time")[0].as_py()
    for i in range(1, runs):
        rid = f"{i:016x}"
        d = os.path.join(out, RUN_PREFIX + rid)
        shutil.copytree(s.run_dir(first), d)
        r = row.to_pylist()[0]
        r.update(run=rid, name=f"copy-{i}", start_time=start + datetime.timedelta(minutes=i),
                 labels=[("n", str(i))])
        pq.write_table(row.from_pylist([r], schema=row.schema), os.path.join(d, RUN_FILE))
    size = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(out) for f in fs)
    n = sum(pq.ParquetFile(os.path.join(s.run_dir(first), f"{t}.parquet")).metadata.num_rows
            for t in ("exits", "locks", "bh", "timers", "aio", "loop", "irqs"))
    print(f"store {out}: {runs} runs x {n:,} records ({n * runs:,}), {size / 2**20:.0f} MiB, "
          f"built in {time.monotonic() - t0:.0f} s")


def measure(out, path):
    """One measurement in this process; prints a JSON line."""
    from kvmscope.analysis import Store
    from kvmscope.analysis import history as h
    s = Store(out)
    cluster = None
    scheduler = None if path == "pandas" else path
    if path == "cluster":
        import distributed
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=None, silence_logs=40)
        scheduler = cluster.scheduler_address
    t0 = time.monotonic()
    st = h.store_stats(s, "hold", scheduler=scheduler)
    t1 = time.monotonic()
    r = h.history(s, scheduler=scheduler)
    t2 = time.monotonic()
    workers = []
    if cluster is not None:
        import distributed
        with distributed.Client(cluster.scheduler_address) as c:
            got = c.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
            workers = [v / 1024 for v in got.values()]
        cluster.close()
    print(json.dumps({"path": path, "stats_s": t1 - t0, "history_s": t2 - t1, "rows": len(st),
                      "change_points": len(r.change_points),
                      "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "workers_rss_mib": workers,
                      "checksum": float(st[["p50", "p99", "total"]].to_numpy().sum())}))


def sizes(paths):
    """Bytes per record of stream traces: their streams rewritten batch for
    batch uncompressed, with lz4 and with zstd, and the Parquet layout."""
    import tempfile
    import pyarrow as pa
    import pyarrow.ipc as ipc
    from kvmscope.analysis import Trace
    from kvmscope.analysis.schema import TABLES
    print(f"{'trace':<28} {'records':>9} {'none':>6} {'lz4':>6} {'zstd':>6} {'parquet':>8}  bytes/record")
    for path in paths:
        t = Trace.load(path)
        n = t.num_records
        row = []
        for comp in (None, "lz4", "zstd"):
            size = 0
            for name in TABLES:
                f = os.path.join(path, name + ".arrows")
                if not os.path.exists(f):
                    continue
                with pa.memory_map(f) as src:
                    r = ipc.open_stream(src)
                    sink = pa.BufferOutputStream()
                    w = ipc.new_stream(sink, r.schema,
                                       options=ipc.IpcWriteOptions(compression=comp))
                    for b in r:
                        w.write_batch(b)
                    w.close()
                    size += len(sink.getvalue())
            row.append(size / n)
        d = os.path.join(tempfile.mkdtemp(), "p")
        t.to_parquet(d)
        pq = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if f.endswith(".parquet"))
        print(f"{path:<28} {n:>9,} {row[0]:>6.1f} {row[1]:>6.1f} {row[2]:>6.1f} {pq / n:>8.1f}")


def exits_by_compression(repeat, iterations, vcpus):
    """PIO exits/s of pio-storm recorded with each stream compression,
    interleaved, medians; and the stream bytes per record while it ran."""
    import statistics
    import tempfile
    from kvmscope.runner import RunConfig, record
    rates = {c: [] for c in ("none", "lz4", "zstd")}
    for _ in range(repeat):
        for comp in rates:
            d = os.path.join(tempfile.mkdtemp(), "t")
            r = record(RunConfig("pio-storm", vcpus=vcpus, iterations=iterations, output=d,
                                 console=False, compression=None if comp == "none" else comp))
            assert r.ok and r.lost == 0, (r.stop_reason, r.lost)
            per = [v["exits"] / (v["run_ns"] / 1e9) for v in r.stats["vcpus"]]
            rates[comp].append(sum(per))
            shutil.rmtree(os.path.dirname(d))
    base = statistics.median(rates["none"])
    print(f"pio-storm --vcpus {vcpus} -n {iterations}, {repeat} interleaved runs, medians:")
    for comp, v in rates.items():
        m = statistics.median(v)
        print(f"  --compression {comp:<5} {m:>10,.0f} exits/s  ({m / base:.3f} of none; "
              f"range {min(v):,.0f} .. {max(v):,.0f})")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--out", default="/tmp/kvmscope-store-scale")
    p.add_argument("--paths", default="pandas,threads,processes,cluster")
    p.add_argument("--measure", help=argparse.SUPPRESS)
    p.add_argument("--sizes", nargs="+", metavar="TRACE",
                   help="only print the bytes per record of these stream traces")
    p.add_argument("--exits", action="store_true",
                   help="only measure exits/s recorded with each stream compression (KVM)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--iterations", type=int, default=200_000)
    p.add_argument("--vcpus", type=int, default=1)
    a = p.parse_args()
    if a.exits:
        exits_by_compression(a.repeat, a.iterations, a.vcpus)
        return
    if a.sizes:
        sizes(a.sizes)
        return
    if a.measure:
        measure(a.out, a.measure)
        return
    build(a.out, a.runs, a.records)
    results = []
    for path in a.paths.split(","):
        proc = subprocess.run([sys.executable, __file__, "--out", a.out, "--measure", path],
                              capture_output=True, text=True, check=True)
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"{'path':<10} {'stats s':>8} {'history s':>10} {'peak RSS MiB':>13} {'workers MiB':>14}"
          "  same numbers")
    ref = results[0]["checksum"]
    for r in results:
        w = "+".join(f"{x:.0f}" for x in r["workers_rss_mib"]) or "-"
        print(f"{r['path']:<10} {r['stats_s']:>8.1f} {r['history_s']:>10.1f} {r['rss_mib']:>13.0f} "
              f"{w:>14}  {'yes' if r['checksum'] == ref else 'NO'}")


if __name__ == "__main__":
    main()
