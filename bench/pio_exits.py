"""Benchmark: PIO exits/s of a minimal C KVM loop vs kvmscope without and with tracing.

Measures, interleaved in one run on one vCPU:
  (a) bench/kvm_min.c: nothing but KVM_RUN and the exit decode, the physical limit;
  (b) kvmscope with --no-trace (bus dispatch under the BQL, always-on counters);
  (c) kvmscope recording every exit and every BQL acquisition;
then prints the ratios and the tracer's cost per record, both derived from
(b) and (c) and from an isolated micro-benchmark.

    python bench/pio_exits.py [--iterations 200000] [--repeat 5] [--vcpus2]
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def build_kvm_min(out_dir):
    exe = os.path.join(out_dir, "kvm_min")
    subprocess.run(["cc", "-O2", "-o", exe, os.path.join(HERE, "kvm_min.c")], check=True)
    return exe


def run_c(exe, guest, iterations):
    out = subprocess.run([exe, guest, str(iterations)], check=True, capture_output=True, text=True).stdout
    _, exits, _, ns = out.split()
    return int(exits) / (int(ns) / 1e9)


def run_kvmscope(iterations, trace_dir, vcpus=1, compression="default"):
    from kvmscope.runner import RunConfig, record
    cfg = RunConfig("pio-storm", vcpus=vcpus, iterations=iterations, trace=trace_dir is not None,
                    output=trace_dir, console=False)
    if compression != "default":
        cfg.compression = compression
    r = record(cfg)
    assert r.ok and r.lost == 0, (r.stop_reason, r.lost)
    rates = [v["exits"] / (v["run_ns"] / 1e9) for v in r.stats["vcpus"]]
    exits = max(1, sum(v["exits"] for v in r.stats["vcpus"]))
    records = r.written / exits
    # always-on aggregate: userspace time from each exit to the next KVM_RUN
    handling = sum(t["total_ns"] for v in r.stats["vcpus"] for t in v["exit_time"].values()) / exits
    return sum(rates), records, handling


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=200000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--vcpus2", action="store_true", help="also measure (b) and (c) with 2 vCPUs")
    ap.add_argument("--compression", action="store_true",
                    help="also measure (c) with uncompressed streams (the default records zstd)")
    args = ap.parse_args()

    from kvmscope import _core, guests
    guest = guests.get("pio-storm").path
    tmp = tempfile.mkdtemp(prefix="kvmscope-bench-")
    try:
        exe = build_kvm_min(tmp)
        a, b, c, recs, hb, hc = [], [], [], [], [], []
        for i in range(args.repeat):
            # interleave so that drift in machine load hits all three alike
            a.append(run_c(exe, guest, args.iterations))
            rate, _, handling = run_kvmscope(args.iterations, None)
            b.append(rate)
            hb.append(handling)
            rate, per_exit, handling = run_kvmscope(args.iterations, os.path.join(tmp, f"t{i}"))
            c.append(rate)
            recs.append(per_exit)
            hc.append(handling)
            shutil.rmtree(os.path.join(tmp, f"t{i}"))
        ma, mb, mc = (statistics.median(x) for x in (a, b, c))
        per_exit = statistics.median(recs)
        print(f"PIO exits/s on 1 vCPU, {args.iterations} iterations, median of {args.repeat} interleaved runs")
        print(f"  (a) minimal C loop on KVM_RUN    {ma:10.0f} /s")
        print(f"  (b) kvmscope --no-trace          {mb:10.0f} /s   (b)/(a) = {mb / ma:.3f}")
        print(f"  (c) kvmscope tracing everything  {mc:10.0f} /s   (c)/(a) = {mc / ma:.3f}   (c)/(b) = {mc / mb:.3f}")
        in_run = (1e9 / mc - 1e9 / mb) / per_exit
        mhb, mhc = statistics.median(hb), statistics.median(hc)
        print(f"  userspace time per exit (exit -> next KVM_RUN): {mhb:.0f} ns without recording, "
              f"{mhc:.0f} ns recording -> tracer cost in the run {(mhc - mhb) / per_exit:.1f} ns per record "
              f"({per_exit:.2f} records per exit)")
        print(f"  (from exits/s alone: {in_run:.1f} ns per record, but that is the difference of two "
              f"~{1e9 / mb / 1000:.1f} us per-exit costs and mostly noise)")
        _core.calibrate_clock()
        micro = min((_core.bench_record_cost() for _ in range(3)), key=lambda d: d["lock_record_ns"])
        per_record = (micro["lock_record_ns"] + micro["record_ns"]) / 2
        print(f"  tracer cost, isolated: one timestamp {micro['timestamp_ns']:.1f} ns, one record write "
              f"{micro['record_ns']:.1f} ns, lock acquisition record with its 3 timestamps "
              f"{micro['lock_record_ns']:.1f} ns")
        print(f"    -> per record on the vCPU path (exit record + lock record, per exit): {per_record:.1f} ns")
        if args.compression:
            cz, cn = [], []
            for i in range(args.repeat):     # interleaved: zstd (the default), then none
                for out, comp in ((cz, "zstd"), (cn, None)):
                    d = os.path.join(tmp, f"z{i}")
                    out.append(run_kvmscope(args.iterations, d, compression=comp)[0])
                    shutil.rmtree(d)
            mz, mn = statistics.median(cz), statistics.median(cn)
            print(f"  (c) with zstd streams (default) {mz:10.0f} /s, uncompressed {mn:10.0f} /s: "
                  f"ratio {mz / mn:.3f}")
        if args.vcpus2:
            b2, c2 = [], []
            for _ in range(args.repeat):  # noqa: B007
                b2.append(run_kvmscope(args.iterations, None, 2)[0])
                c2.append(run_kvmscope(args.iterations, os.path.join(tmp, "t2"), 2)[0])
                shutil.rmtree(os.path.join(tmp, "t2"))
            b2, c2 = statistics.median(b2), statistics.median(c2)
            print(f"  2 vCPUs (sum): --no-trace {b2:.0f} /s, tracing {c2:.0f} /s, ratio {c2 / b2:.3f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
