"""The `kvmscope` command: record runs of built-in guests and analyse their traces."""
import argparse
import os
import re
import sys

from . import __version__, guests

_SIZE = re.compile(r"^(\d+)([KMG]?)(i?B)?$", re.I)


def parse_size(text):
    """'16M', '1G', '65536' -> bytes."""
    m = _SIZE.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r}: use e.g. 16M, 1G or a byte count")
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2).upper()]


def parse_inject(text):
    """'CALLSITE=NS' (NS may end in ns, us or ms)."""
    name, sep, value = text.partition("=")
    m = re.match(r"^(\d+(?:\.\d+)?)(ns|us|ms)?$", value.strip())
    if not sep or not name or not m:
        raise argparse.ArgumentTypeError(f"bad --inject-hold {text!r}: use CALLSITE=NS, e.g. pio:debugport=2us")
    return name, float(m.group(1)) * {"ns": 1, None: 1, "us": 1e3, "ms": 1e6}[m.group(2)]


def _fmt_ns(ns):
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("us", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.2f} {unit}"
    return f"{ns:.0f} ns"


def _fmt_rate(x):
    return f"{x / 1e3:.1f}k" if x >= 1e3 else f"{x:.0f}"


_ENDED_BY = {"guest exit": "the guest (exit device)", "duration": "--duration",
             "interrupted": "an interrupt (Ctrl-C)", "error": "an error"}


def format_summary(result):
    """The end-of-run summary printed by `kvmscope run` (a string)."""
    c = result.config
    st = result.stats
    ended = _ENDED_BY.get(result.stop_reason, result.stop_reason)
    lines = [f"kvmscope: {c.guest} on {c.vcpus} vCPU{'s' if c.vcpus > 1 else ''}, "
             f"{c.iterations} iterations: {result.elapsed_s:.2f} s, ended by {ended}"]
    for v in st["vcpus"]:
        secs = v["run_ns"] / 1e9
        rate = v["exits"] / secs if secs > 0 else 0.0
        reasons = ", ".join(
            f"{k} {n}" + (f" avg {_fmt_ns(v['exit_time'][k]['total_ns'] / n)}" if k in v["exit_time"] else "")
            for k, n in sorted(v["by_reason"].items(), key=lambda kv: -kv[1]))
        counted = guests.get(c.guest).status_is_count
        status = (f"{counted} {v['exit_status']}" if counted else f"status {v['exit_status']}") \
            if v["finished_by_guest"] else "stopped"
        lines.append(f"  vcpu{v['vcpu']}: {v['exits']} exits, {_fmt_rate(rate)} exits/s ({reasons}); {status}")
    bql = st["bql"]
    share = 100.0 * bql["contended"] / bql["acquisitions"] if bql["acquisitions"] else 0.0
    lines.append(f"  BQL: {bql['acquisitions']} acquisitions (vCPUs {bql['vcpu_acquisitions']}, "
                 f"main loop {bql['main_loop_acquisitions']}), {bql['contended']} contended "
                 f"({share:.1f}%), total wait {_fmt_ns(bql['wait_ns'])}")
    ml, aio = st["main_loop"], st["aio"]
    events = [f"main loop {ml['iterations']} iterations"]
    if aio["submitted"]:
        events.append(f"AIO {aio['submitted']} requests ({aio['completed']} completed, "
                      f"{c.aio_threads} workers), block device errors {st['blk']['errors']}")
    if any(st["timer_ticks"]):
        events.append("timer ticks " + ", ".join(f"vcpu{i} {n}" for i, n in enumerate(st["timer_ticks"])))
    events.append(f"{st['irqchip']} irqchip")
    lines.append("  " + "; ".join(events))
    if result.trace_path:
        lost = result.lost
        lines.append(f"  trace: {result.trace_path}: {result.written} records written, {lost} lost"
                     + ("  (WARNING: records were lost; use --lossless or a larger --ring)" if lost else ""))
        stalls = sum(r["stalls"] for r in result.records.values())
        if stalls:
            lines.append(f"  lossless mode: threads waited for the drain {stalls} times")
    else:
        lines.append("  trace: off (--no-trace)")
    for msg in result.messages:
        lines.append(f"  {msg}")
    return "\n".join(lines)


def _config_from_args(args):
    from .runner import RunConfig
    return RunConfig(
        guest=args.guest, vcpus=args.vcpus, iterations=args.iterations, seed=args.seed,
        memory=args.memory, duration=args.duration, output=None if args.no_trace else args.output,
        trace=not args.no_trace, lossless=args.lossless, ring_records=args.ring, clock=args.clock,
        kvm_device=args.kvm_device, console=not args.quiet_console,
        inject_hold=dict(args.inject_hold or []), lockless=tuple(args.lockless or ()),
        irqchip=args.irqchip, aio_threads=args.aio_threads, disk=args.disk, disk_size=args.disk_size,
        timer_period_us=args.timer_period_us, port_burst=args.port_burst,
        compression=None if args.compression == "none" else args.compression)


def _progress_printer(enabled):
    if not enabled:
        return None

    def show(elapsed, written):
        sys.stderr.write(f"\r  recording: {elapsed:6.1f} s, {written} records")
        sys.stderr.flush()
    return show


def cmd_run(args):
    from .runner import record
    config = _config_from_args(args)
    show_progress = sys.stderr.isatty() and not args.quiet
    result = record(config, progress=_progress_printer(show_progress))
    if show_progress:
        sys.stderr.write("\r" + " " * 60 + "\r")
    if not args.quiet:
        print(format_summary(result))
    if result.stop_reason == "interrupted":
        return 130
    return 0 if result.ok else 1


def cmd_demo(args):
    args.guest, args.vcpus, args.iterations = "pio-storm", 2, args.iterations
    status = cmd_run(args)
    if status != 0:
        return status
    from .analysis import Trace
    trace = Trace.load(args.output)
    print()
    print(f"Loaded {args.output} with kvmscope.analysis.Trace: "
          f"{len(trace.exits)} exits, {len(trace.locks)} lock acquisitions")
    try:
        from .analysis import report
        print(report.render(trace, fmt="text", top=5))
    except (ImportError, AttributeError):
        print(trace.exits.head().to_string())
        print(trace.locks.head().to_string())
    return 0


def cmd_guests(args):
    width = max(len(n) for n in guests.GUESTS)
    for g in guests.GUESTS.values():
        print(f"{g.name:<{width}}  {g.summary}")
    return 0


def cmd_info(args):
    from . import _core
    kvm = _core.Kvm(args.kvm_device)
    print(f"{kvm.path}: KVM API version {kvm.api_version}, vcpus recommended {kvm.recommended_vcpus}, "
          f"max {kvm.max_vcpus}, kvm_run size {kvm.run_size}")
    for name, value in kvm.capabilities().items():
        print(f"  {name:<24} {value}")
    clock = _core.calibrate_clock()
    print(f"clock: {clock['name']} via {clock['source']}"
          + (f" ({clock['tsc_hz'] / 1e9:.3f} GHz TSC)" if clock["tsc_hz"] else ""))
    return 0


def _add_run_options(p, demo=False):
    if not demo:
        p.add_argument("guest", help="built-in guest program (see `kvmscope guests`)")
        p.add_argument("--vcpus", type=int, default=1, help="vCPU threads (default 1)")
    p.add_argument("--iterations", "-n", type=int, default=100000 if demo else None,
                   help="guest loop count (default: per guest)")
    p.add_argument("--seed", type=int, default=1, help="seed written to the guest parameters")
    p.add_argument("--memory", "-m", type=parse_size, default="16M", help="guest RAM (default 16M)")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("-o", "--output", default="traces/demo" if demo else None, help="trace directory")
    p.add_argument("--no-trace", action="store_true", help="run the same code with recording off")
    p.add_argument("--lossless", action="store_true",
                   help="block a thread whose trace ring is full instead of dropping records")
    p.add_argument("--ring", type=int, default=1 << 16, help="records per thread ring (default 65536)")
    p.add_argument("--clock", choices=["auto", "tsc", "monotonic"], default="auto",
                   help="timestamp source (always converted to CLOCK_MONOTONIC ns)")
    p.add_argument("--kvm-device", default="/dev/kvm", help="KVM device node (default /dev/kvm)")
    p.add_argument("--inject-hold", type=parse_inject, action="append", metavar="CALLSITE=NS",
                   help="busy-hold the BQL this much longer at a call site (experiments)")
    p.add_argument("--lockless", action="append", metavar="DEVICE",
                   help="dispatch this device without the BQL (A/B experiments)")
    p.add_argument("--irqchip", choices=["kernel", "user"], default="kernel",
                   help="interrupt controller: in-kernel (irqfd MSIs) or userspace (KVM_INTERRUPT)")
    p.add_argument("--aio-threads", type=int, default=2, help="AIO worker threads (default 2)")
    p.add_argument("--disk", help="disk image for the block device (created if missing; "
                                  "default: a temporary image)")
    p.add_argument("--disk-size", type=parse_size, default="1M", help="size of a created image (default 1M)")
    p.add_argument("--timer-period-us", type=int, help="timer device period for timer guests "
                                                       "(default 1000, mixed 2000)")
    p.add_argument("--port-burst", type=int, default=8, help="mixed: port writes per block request")
    p.add_argument("--compression", choices=["none", "lz4", "zstd"], default="none",
                   help="compress the trace's Arrow buffers (smaller files to ship)")
    p.add_argument("--quiet-console", action="store_true", help="do not echo the guest console")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary or progress output")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="kvmscope", description="Record and analyse lock contention inside a KVM VMM.")
    parser.add_argument("--version", action="version", version=f"kvmscope {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("run", help="run a guest and record a trace")
    _add_run_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="record a demo trace (pio-storm, 2 vCPUs) and report on it")
    _add_run_options(p, demo=True)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("guests", help="list the built-in guest programs")
    p.set_defaults(func=cmd_guests)

    p = sub.add_parser("info", help="show KVM capabilities and the clock kvmscope would use")
    p.add_argument("--kvm-device", default="/dev/kvm")
    p.set_defaults(func=cmd_info)

    try:
        from .analysis import cli as analysis_cli
    except ImportError:
        analysis_cli = None
    if analysis_cli is not None and hasattr(analysis_cli, "register"):
        analysis_cli.register(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except (ValueError, OSError, FileNotFoundError) as e:
        print(f"kvmscope: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        if type(e).__name__ in ("KvmError", "KvmscopeError", "TraceError"):
            print(f"kvmscope: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
