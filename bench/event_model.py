"""Benchmark: latencies of the event model on this machine, from real recorded traces.

Records three runs and prints, from their traces:
  - AIO request latency by stage (queue, I/O, completion in the main loop), per op;
  - bottom-half schedule-to-run latency;
  - timer lateness (fire - deadline);
  - main-loop wake-ups per second and time in poll vs dispatch.

    python bench/event_model.py [--iterations 400] [--vcpus 2] [--irqchip kernel|user]
"""
import argparse
import os
import sys
import tempfile


def us(ns):
    return f"{ns / 1e3:8.1f} us"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=400)
    ap.add_argument("--vcpus", type=int, default=2)
    ap.add_argument("--irqchip", choices=["kernel", "user"], default="kernel")
    args = ap.parse_args()

    from kvmscope.analysis import Trace
    from kvmscope.runner import RunConfig, record

    tmp = tempfile.mkdtemp(prefix="kvmscope-bench-")
    runs = {}
    for guest, n in (("disk-io", args.iterations), ("mixed", args.iterations),
                     ("timer-hlt", args.iterations)):
        out = os.path.join(tmp, guest)
        r = record(RunConfig(guest, vcpus=args.vcpus, iterations=n, output=out, console=False,
                             irqchip=args.irqchip))
        assert r.ok, (guest, r.stop_reason, r.messages)
        runs[guest] = (Trace.load(out), r)

    print(f"Event model latencies, {args.vcpus} vCPUs, irqchip {args.irqchip}, {args.iterations} iterations per guest")
    for guest in ("disk-io", "mixed"):
        t, r = runs[guest]
        print(f"\n{guest}: AIO latency by stage ({args.vcpus * args.iterations} requests + flushes, "
              f"{r.config.aio_threads} workers)")
        st = t.aio_stats()
        print("  op     stage        count       p50        p99        max")
        for row in st.itertuples():
            print(f"  {row.op:<6} {row.stage:<11} {row.requests:6d} {us(row.p50_ns)} {us(row.p99_ns)} {us(row.max_ns)}")
        for row in t.bh_stats().itertuples():
            print(f"  bottom half {row.name:<14} runs {row.runs:6d}   schedule->run p50 {us(row.delay_p50_ns)}"
                  f"  p99 {us(row.delay_p99_ns)}  max {us(row.delay_max_ns)}")
        for row in t.loop_stats().itertuples():
            print(f"  main loop: {row.iterations} iterations, {row.wakeups_per_s:8.0f} wake-ups/s, "
                  f"poll {row.poll_pct:.1f}% / dispatch {row.dispatch_pct:.1f}% of the time, "
                  f"dispatch p99 {us(row.dispatch_p99_ns)}")
    t, r = runs["timer-hlt"]
    print(f"\ntimer-hlt: timer lateness (fire - deadline), period {r.config.timer_period_us} us")
    for row in t.timer_stats().itertuples():
        print(f"  {row.name:<16} fires {row.fires:5d}   p50 {us(row.late_p50_ns)}  p99 {us(row.late_p99_ns)}"
              f"  max {us(row.late_max_ns)}")
    for row in t.loop_stats().itertuples():
        print(f"  main loop: {row.wakeups_per_s:8.0f} wake-ups/s")


if __name__ == "__main__":
    sys.exit(main())
