"""The `kvmscope` command line: every command and option, with its range and
default, registered explicitly in :func:`build_parser`.

Recording and the host (``run``, ``demo``, ``guests``, ``info``) run from here;
the analysis commands (``report``, ``validate``, ``diff``, ``plot``, ``export``)
run from :mod:`kvmscope.analysis.cli`, imported only when one of them runs, so
that ``kvmscope --help`` and ``kvmscope run`` never load pandas or matplotlib.

Bad input gives one line on stderr, ``kvmscope COMMAND: error: ...``, and exit
status 2, whether argparse, :class:`~kvmscope.config.RunConfig` or the core
refuses it; any other exception is a bug and keeps its traceback.
"""
import argparse
import dataclasses
import json
import re
import sys

from . import __version__, guests, units
from .config import SETTINGS, RunConfig, Setting
from .errors import ConfigError, KvmscopeError

#: Exit statuses shared by every command (``validate`` and ``diff`` use 1 for
#: violations and regressions; ``run`` uses 1 for a failed guest).
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

# Choices of the analysis commands, here so that building the parser imports
# no pandas; tests/analysis/test_analysis_cli.py checks them against the
# library modules (report, regress, plot, perfetto) that define them.
REPORT_FORMATS = ("text", "markdown", "json", "csv")
#: Arrow IPC buffer compressions a trace may be written with.
COMPRESSIONS = ("none", "lz4", "zstd")
#: ``report --sort`` keys (perf lock's names; kvmscope.analysis.select.SORT_KEYS maps them to columns).
REPORT_SORT_KEYS = ("acquired", "contended", "avg_wait", "wait_total", "wait_max", "wait_min", "avg_hold",
                    "hold_total", "hold_max", "hold_min", "handoffs", "caused")
REPORT_SECTIONS = ("caused", "exits", "addrs", "locks", "callsites", "blockers", "fairness", "pingpong",
                   "convoys", "bh", "timers", "aio", "loop", "cpu")
DIFF_METRICS = ("hold", "wait")
DIFF_STATS = ("p50", "p90", "p99", "mean", "total")
DIFF_FORMATS = ("text", "markdown", "html", "json")
PLOT_KINDS = ("timeline", "wait", "hold", "contention", "exits", "aio", "bh", "timers", "path")
EXPORT_MAX_EVENTS = 2_000_000
ROW_LIMIT = 2 ** 31 - 1


# --------------------------------------------------------------------------
# argparse plumbing: one-line errors, defaults in the help, option types

class CommandParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr,
    ``kvmscope COMMAND: error: MESSAGE``, and exit status 2 (no usage block)."""

    error_prefix = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # "-16M", "-1us", "-5%" are (bad) values to range-check, not unknown options
        self._negative_number_matcher = re.compile(r"^-(\d|\.\d)")

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.error_prefix or self.prog}: error: {message}\n")

    def parse_args(self, args=None, namespace=None):
        args, extra = self.parse_known_args(args, namespace)
        if extra:       # name the command they were given to, not the top-level parser
            command = getattr(args, "command", None)
            self.exit(EXIT_USAGE, f"{'kvmscope ' + command if command else self.error_prefix or self.prog}: "
                                  f"error: unrecognized arguments: {' '.join(extra)}\n")
        return args


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions as written and appends ``(default: X)`` to each
    option whose default says something (not None, False or a list)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or not action.option_strings or default is None or default is False
                or default is argparse.SUPPRESS or isinstance(default, (list, tuple))):
            return text
        return text + " (default: %(default)s)"


def _type(parse, name):
    """An argparse type from *parse*; its ConfigError becomes the whole error line."""
    def convert(text):
        try:
            return parse(text)
        except ConfigError as e:
            # ArgumentError without an argument: argparse prints the message alone
            raise argparse.ArgumentError(None, str(e)) from None
    convert.__name__ = name
    return convert


def setting(field):
    """Type of the option that sets RunConfig *field*: its range is checked here,
    at parse time, with the same message as :meth:`RunConfig.validate`."""
    s = SETTINGS[field]
    return _type(lambda text: s.parse(text, shown=text), field)


def count(option, low, high):
    """Type of an integer option in ``low .. high``."""
    s = Setting(option, option, low, high)
    return _type(lambda text: s.parse(text, shown=text), "integer")


def duration_ns(option, low, high, unit="ns"):
    """Type of a duration option: integer ns in ``low .. high`` (bare numbers in *unit*)."""
    s = Setting(option, option, low, high, "duration", "ns")
    return _type(lambda text: s.parse(units.parse_duration(text, unit, option), shown=text),
                 "duration")


def _window(text):
    return units.parse_window(text, "window")


def _inject_hold(text):
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise ConfigError(f"--inject-hold {text!r}: use CALLSITE=DURATION, e.g. pio:debugport=2us")
    return name.strip(), SETTINGS["inject_hold"].parse(value, shown=text)


def _percent(text):
    return units.parse_percent(text, "--threshold")


def _alpha(text):
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"bad number {text!r} for --alpha: use e.g. 0.05") from None
    if not 0 < value < 1:
        raise ConfigError(f"--alpha {text} out of range: use a number between 0 and 1 (exclusive)")
    return value


class _Deprecated(argparse.Action):
    """An old spelling of an option: still works, with a one-line note on stderr."""

    def __init__(self, option_strings, dest, use=None, unit="", **kwargs):
        self.use, self.unit = use, unit
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        sys.stderr.write(f"{parser.error_prefix or parser.prog}: note: {option_string} is deprecated: "
                         f"use {self.use} {values}{self.unit}\n")
        setattr(namespace, self.dest, values)


def _command(sub, name, summary, description, func):
    p = sub.add_parser(name, help=summary, description=description, formatter_class=HelpFormatter)
    p.error_prefix = f"kvmscope {name}"
    p.set_defaults(func=func, command=name)
    return p


def _format_option(p, choices=("text", "json"), default="text", what="output format"):
    p.add_argument("--format", choices=choices, default=default, help=what)


def _limit_option(p, what, default):
    """``--limit N`` (``--top N`` is a hidden alias): the one row-limit option name."""
    p.add_argument("--limit", type=count("--limit", 0, ROW_LIMIT), default=default, metavar="N",
                   help=f"{what}; 0: all; 0 .. {ROW_LIMIT}")
    p.add_argument("--top", type=count("--top", 0, ROW_LIMIT), dest="limit", help=argparse.SUPPRESS)


# --------------------------------------------------------------------------
# run and demo

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
            f"{k} {n}" + (f" avg {units.format_duration(v['exit_time'][k]['total_ns'] / n)}"
                          if k in v["exit_time"] else "")
            for k, n in sorted(v["by_reason"].items(), key=lambda kv: -kv[1]))
        counted = guests.get(c.guest).status_is_count
        status = (f"{counted} {v['exit_status']}" if counted else f"status {v['exit_status']}") \
            if v["finished_by_guest"] else "stopped"
        lines.append(f"  vcpu{v['vcpu']}: {v['exits']} exits, {units.format_rate(rate)} exits/s "
                     f"({reasons}); {status}")
    bql = st["bql"]
    share = 100.0 * bql["contended"] / bql["acquisitions"] if bql["acquisitions"] else 0.0
    lines.append(f"  BQL: {bql['acquisitions']} acquisitions (vCPUs {bql['vcpu_acquisitions']}, "
                 f"main loop {bql['main_loop_acquisitions']}), {bql['contended']} contended "
                 f"({share:.1f}%), total wait {units.format_duration(bql['wait_ns'])}")
    cpu = _cpu_line(st.get("cpu"))
    if cpu:
        lines.append(cpu)
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


def _cpu_line(cpu):
    """'CPU time (waited for a CPU): vcpu0 225ms (154ms, 41%), ...' from
    ``stats.cpu``; the threads that used or waited for 1 ms or more."""
    if not cpu or not cpu.get("threads"):
        return ""
    parts = []
    for name, t in cpu["threads"].items():
        c, q = t.get("cpu_ns"), t.get("runq_ns")
        if c is None or max(c, q or 0) < 1_000_000:
            continue
        text = f"{name} {units.format_duration(c, sep='')}"
        if q is not None:
            text += f" ({units.format_duration(q, sep='')}, {100.0 * q / max(c + q, 1):.0f}%)"
        parts.append(text)
    if cpu.get("other_cpu_ns", 0) >= 1_000_000:
        parts.append(f"other threads {units.format_duration(cpu['other_cpu_ns'], sep='')}")
    return "  CPU time (waited for a CPU): " + ", ".join(parts) if parts else ""


def summary_dict(result):
    """The end-of-run summary as a JSON-ready dict (``kvmscope run --format json``):
    ``guest``, ``vcpus``, ``iterations``, ``stop_reason``, ``ok``, ``elapsed_s``,
    ``trace`` (the directory or None), ``records_written``, ``records_lost``,
    ``records`` (per thread), ``tables`` (rows per table), ``stats`` (the core's
    counters, as in meta.json), ``clock``, ``messages`` and ``config``."""
    config = dataclasses.asdict(result.config)
    config["lockless"] = list(result.config.lockless)
    return {
        "guest": result.config.guest, "vcpus": result.config.vcpus,
        "iterations": result.config.iterations, "stop_reason": result.stop_reason, "ok": result.ok,
        "elapsed_s": result.elapsed_s, "trace": result.trace_path,
        "records_written": result.written, "records_lost": result.lost,
        "records": result.records, "tables": result.tables, "stats": result.stats,
        "clock": result.clock, "messages": result.messages, "config": config,
    }


def _config_from_args(args):
    return RunConfig(
        guest=args.guest, vcpus=args.vcpus, iterations=args.iterations, seed=args.seed,
        memory=args.memory, duration=args.duration, output=None if args.no_trace else args.output,
        trace=not args.no_trace, lossless=args.lossless, ring_records=args.ring, clock=args.clock,
        kvm_device=args.kvm_device, console=not args.quiet_console and args.format == "text",
        inject_hold=dict(args.inject_hold or []), lockless=tuple(args.lockless or ()),
        irqchip=args.irqchip, aio_threads=args.aio_threads, disk=args.disk, disk_size=args.disk_size,
        timer_period_us=args.timer_period_us, port_burst=args.port_burst,
        compression=None if args.compression == "none" else args.compression, force=args.force)


def _progress_printer(enabled):
    if not enabled:
        return None

    def show(elapsed, written):
        sys.stderr.write(f"\r  recording: {elapsed:6.1f} s, {written} records")
        sys.stderr.flush()
    return show


def _record(args):
    """Validate, prepare -o, record; returns the RunResult."""
    from .runner import record
    config = _config_from_args(args)
    config.validate()                   # every bad value refused before /dev/kvm is opened
    show_progress = sys.stderr.isatty() and not args.quiet
    try:
        result = record(config, progress=_progress_printer(show_progress))
    except ValueError as e:
        # what only the core can check: vCPUs beyond the host's, call sites, devices
        raise ConfigError(str(e)) from None
    if show_progress:
        sys.stderr.write("\r" + " " * 60 + "\r")
    return result


def _run_status(result):
    if result.stop_reason == "interrupted":
        return EXIT_INTERRUPTED
    return EXIT_OK if result.ok else EXIT_FAILED


def cmd_run(args):
    """``kvmscope run``: 0 the guest ended well, 1 it failed, 130 interrupted."""
    result = _record(args)
    if not args.quiet:
        if args.format == "json":
            print(json.dumps(summary_dict(result), indent=1))
        else:
            print(format_summary(result))
    return _run_status(result)


def cmd_demo(args):
    """``kvmscope demo``: record pio-storm on 2 vCPUs, then report on the trace."""
    args.guest, args.vcpus = "pio-storm", 2
    result = _record(args)
    status = _run_status(result)
    if status != EXIT_OK or args.no_trace:      # nothing to report on
        if not args.quiet:
            print(json.dumps(summary_dict(result), indent=1) if args.format == "json"
                  else format_summary(result))
        return status
    from .analysis import Trace, render, report
    trace = Trace.load(args.output)
    if args.format == "json":
        print(json.dumps({"run": summary_dict(result),
                          "report": json.loads(report.render(trace, fmt="json"))}, indent=1))
        return EXIT_OK
    if not args.quiet:
        print(format_summary(result))
        print()
    print(f"Loaded {args.output} with kvmscope.analysis.Trace: "
          f"{len(trace.exits)} exits, {len(trace.locks)} lock acquisitions")
    print(report.render(trace, fmt="text", top=5, **render.terminal_style(sys.stdout)))
    return EXIT_OK


def _add_run_options(p, demo=False):
    s = SETTINGS
    if not demo:
        p.add_argument("guest", metavar="GUEST",
                       help="built-in guest program: " + ", ".join(guests.GUESTS) + " (see kvmscope guests)")
        p.add_argument("--vcpus", type=setting("vcpus"), default=1, metavar="N",
                       help=f"vCPU threads, {s['vcpus'].describe()}")
    p.add_argument("--iterations", "-n", type=setting("iterations"), default=100000 if demo else None,
                   metavar="N", help=f"guest loop count, {s['iterations'].describe()}"
                   + ("" if demo else " (default: per guest, see kvmscope guests --format json)"))
    p.add_argument("--seed", type=setting("seed"), default=1, metavar="N",
                   help=f"seed written to the guest parameters, {s['seed'].describe()}")
    p.add_argument("--memory", "-m", type=setting("memory"), default="16M", metavar="SIZE",
                   help=f"guest RAM, {s['memory'].describe()}; bytes, or with K, M, G")
    p.add_argument("--duration", type=setting("duration"), metavar="TIME",
                   help=f"stop cleanly after this long, {s['duration'].describe()}; "
                        "a bare number is seconds (2s, 500ms, 2)")
    p.add_argument("-o", "--output", default="traces/demo" if demo else None, metavar="DIR",
                   help="trace directory: missing, empty, or holding a trace to replace with --force")
    p.add_argument("--force", action="store_true",
                   help="replace the trace already in DIR (only its own files; a directory "
                        "holding other files and no trace is still refused)")
    p.add_argument("--no-trace", action="store_true", help="run the same code with recording off")
    p.add_argument("--lossless", action="store_true",
                   help="block a thread whose trace ring is full instead of dropping records")
    p.add_argument("--ring", type=setting("ring_records"), default=1 << 16, metavar="N",
                   help=f"records per thread ring, {s['ring_records'].describe()} "
                        "(rounded up to a power of two; 64 bytes each)")
    p.add_argument("--clock", choices=["auto", "tsc", "monotonic"], default="auto",
                   help="timestamp source (traces are always in CLOCK_MONOTONIC ns)")
    p.add_argument("--kvm-device", default="/dev/kvm", metavar="PATH", help="KVM device node")
    p.add_argument("--inject-hold", type=_type(_inject_hold, "inject_hold"), action="append",
                   metavar="CALLSITE=TIME",
                   help=f"busy-hold the BQL this much longer at a call site, {s['inject_hold'].describe()}; "
                        "a bare number is ns (pio:debugport=2us); repeat for several sites")
    p.add_argument("--lockless", action="append", metavar="DEVICE",
                   help="dispatch this device without the BQL (A/B experiments); repeat for several")
    p.add_argument("--irqchip", choices=["kernel", "user"], default="kernel",
                   help="interrupt controller: in-kernel (irqfd MSIs) or userspace (KVM_INTERRUPT)")
    p.add_argument("--aio-threads", type=setting("aio_threads"), default=2, metavar="N",
                   help=f"AIO worker threads, {s['aio_threads'].describe()}")
    p.add_argument("--disk", metavar="PATH",
                   help="disk image of the block device (created with --disk-size if missing; "
                        "default: a temporary image)")
    p.add_argument("--disk-size", type=setting("disk_size"), default="1M", metavar="SIZE",
                   help=f"size of a created image, {s['disk_size'].describe()}")
    p.add_argument("--timer-period", type=setting("timer_period_us"), dest="timer_period_us", metavar="TIME",
                   help=f"timer device period of timer-hlt and mixed, {s['timer_period_us'].describe()}; "
                        "a bare number is us (default: 1ms, mixed 2ms)")
    p.add_argument("--timer-period-us", type=setting("timer_period_us"), dest="timer_period_us",
                   action=_Deprecated, use="--timer-period", unit="us", help=argparse.SUPPRESS)
    p.add_argument("--port-burst", type=setting("port_burst"), default=8, metavar="N",
                   help=f"mixed: port writes after each block request, {s['port_burst'].describe()}")
    p.add_argument("--compression", choices=COMPRESSIONS, default=RunConfig.compression or "none",
                   help="compress the Arrow streams while recording (the finished trace is "
                        "Parquet, zstd, either way)")
    _format_option(p, what="summary format: text, or json (one object; the guest console is "
                            "then not echoed, it is in the trace's console.log)")
    p.add_argument("--quiet-console", action="store_true", help="do not echo the guest console")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary or progress output")


# --------------------------------------------------------------------------
# guests and info

def cmd_guests(args):
    """``kvmscope guests``: the built-in guest programs."""
    if args.format == "json":
        print(json.dumps([dataclasses.asdict(g) for g in guests.GUESTS.values()], indent=1))
        return EXIT_OK
    width = max(len(n) for n in guests.GUESTS)
    for g in guests.GUESTS.values():
        print(f"{g.name:<{width}}  {g.summary}")
    return EXIT_OK


def cmd_info(args):
    """``kvmscope info``: KVM capabilities and the clock a recording would use."""
    from . import _core
    kvm = _core.Kvm(args.kvm_device)
    caps = kvm.capabilities()
    clock = _core.calibrate_clock()
    if args.format == "json":
        print(json.dumps({"device": kvm.path, "api_version": kvm.api_version,
                          "recommended_vcpus": kvm.recommended_vcpus, "max_vcpus": kvm.max_vcpus,
                          "run_size": kvm.run_size, "capabilities": caps, "clock": clock}, indent=1))
        return EXIT_OK
    print(f"{kvm.path}: KVM API version {kvm.api_version}, vcpus recommended {kvm.recommended_vcpus}, "
          f"max {kvm.max_vcpus}, kvm_run size {kvm.run_size}")
    for name, value in caps.items():
        print(f"  {name:<24} {value}")
    print(f"clock: {clock['name']} via {clock['source']}"
          + (f" ({clock['tsc_hz'] / 1e9:.3f} GHz TSC)" if clock["tsc_hz"] else ""))
    return EXIT_OK



def _lazy(module, name):
    """Command function *name* of *module* (relative to this package),
    imported when the command runs: building the parser imports neither
    pandas nor the analysis."""
    def run(args):
        import importlib
        return getattr(importlib.import_module(module, __package__), name)(args)
    run.__name__ = name
    return run

# --------------------------------------------------------------------------
# analysis commands: parsed here, run by kvmscope.analysis.cli



def add_selection_options(p, sort_keys, what="rows"):
    """``--window``, ``--threads``, ``--callsite`` and ``--sort``: the filters
    of report-like commands (see kvmscope.analysis.select)."""
    p.add_argument("--window", type=_type(_window, "window"), metavar="START:END",
                   help="only rows overlapping this window: relative to the trace start with a "
                        "unit (10ms:20ms) or absolute ns; either side may be empty")
    p.add_argument("--threads", action="append", metavar="NAMES",
                   help="only these threads, comma-separated (vcpu0,main); repeat to add")
    p.add_argument("--callsite", action="append", metavar="GLOB", dest="callsites",
                   help="only these call sites, glob ('pio:*'); repeat for several")
    p.add_argument("--sort", choices=sort_keys, metavar="KEY",
                   help=f"order the {what} by KEY, largest first: " + ", ".join(sort_keys))


def add_analysis_commands(sub, funcs=None):
    """Add ``report``, ``validate``, ``diff``, ``plot`` and ``export`` to *sub*.

    Parameters
    ----------
    sub : argparse._SubParsersAction
    funcs : dict of str to callable, optional
        The command functions by name (``cmd_report``...); by default each is
        imported from :mod:`kvmscope.analysis.cli` when its command runs.
    """
    funcs = funcs or {}

    def func(name):
        return funcs.get(name) or _lazy(".analysis.cli", name)

    p = _command(sub, "report", "statistics of a trace (exits, locks, bh, AIO...)",
                 "Print perf-kvm-stat / lock_stat style statistics of a trace directory.\n"
                 "Exit status: 0, or 2 if the trace is unreadable.", func("cmd_report"))
    p.add_argument("trace", metavar="TRACE", help="trace directory")
    _format_option(p, REPORT_FORMATS, what="output format (json and csv carry raw ns values)")
    _limit_option(p, "rows per section (default: 20 for text and markdown, all for json and csv)", None)
    p.add_argument("--section", action="append", choices=list(REPORT_SECTIONS) + ["all"],
                   metavar="SECTION",
                   help="section to show, one of " + ", ".join(REPORT_SECTIONS + ("all",))
                        + "; repeat for several (default: all but fairness, pingpong, convoys)")
    p.add_argument("--all-columns", action="store_true", help="text/markdown: show every column")
    add_selection_options(p, sort_keys=REPORT_SORT_KEYS, what="sections")

    p = _command(sub, "validate", "check a trace's invariants",
                 "Check a trace directory: schema, one lock owner at a time, matched "
                 "releases, per-thread time order, stage order, in the data the trace "
                 "covers. Lost records and a killed, failed or aborted run are reported "
                 "as such (where, which threads), never as violations.\n"
                 "Exit status: 0 clean, 1 violations, 2 unreadable trace or missing "
                 "data, 3 no violation in the covered data but the data is incomplete.",
                 func("validate_command"))
    p.add_argument("trace", metavar="TRACE", help="trace directory")
    _format_option(p, what="output format: text (one line per violation) or json (one object)")
    _limit_option(p, "print at most N violations", 100)
    p.add_argument("--tolerance", type=duration_ns("--tolerance", 0, 60 * units.NS_PER["s"]),
                   dest="tolerance_ns", default=0, metavar="TIME",
                   help="ignore lock-owner overlaps up to this long, 0 .. 60s; a bare number is "
                        "ns (0: strict)")
    p.add_argument("--tolerance-ns", type=duration_ns("--tolerance", 0, 60 * units.NS_PER["s"]),
                   dest="tolerance_ns", action=_Deprecated, use="--tolerance", unit="ns",
                   help=argparse.SUPPRESS)

    p = _command(sub, "diff", "regression report: lock hold/wait times, baseline vs candidate",
                 "Compare lock hold (or wait) times per lock and call site between a baseline "
                 "and a candidate, each one trace or a group of repeated runs.\n\n"
                 "  kvmscope diff BASE NEW\n"
                 "  kvmscope diff BASE1 BASE2 BASE3 --vs NEW1 NEW2 NEW3\n"
                 "  kvmscope diff runs/base --vs runs/new   (directories of runs)\n\n"
                 "A row regressed when the Holm-corrected Mann-Whitney test is significant AND "
                 "the lower bound of the interval of the relative change (bootstrap over runs "
                 "and time blocks; with groups, at least the run-level t interval) is above "
                 "--threshold AND the absolute change is at least --min-delta. See "
                 "docs/regress.md.\nExit status: 0 no regression, 1 regression, 2 error.",
                 func("cmd_diff"))
    p.add_argument("base", nargs="+", metavar="BASE", help="baseline trace(s), or a directory of runs")
    p.add_argument("--vs", nargs="+", metavar="NEW", help="candidate trace(s), or a directory of runs")
    p.add_argument("--metric", choices=DIFF_METRICS, default="hold",
                   help="hold time, or wait time of contended acquisitions")
    p.add_argument("--stat", choices=DIFF_STATS, default="p50", help="statistic judged (total is per run)")
    p.add_argument("--threshold", type=_type(_percent, "percent"), default="10%", metavar="PERCENT",
                   help="smallest relative change that counts, 0%% .. 10000%%")
    p.add_argument("--min-delta", type=duration_ns("--min-delta", 0, 60 * units.NS_PER["s"]),
                   default="100ns", metavar="TIME",
                   help="smallest absolute change that counts, 0 .. 60s; a bare number is ns")
    p.add_argument("--alpha", type=_type(_alpha, "alpha"), default=0.05, metavar="P",
                   help="significance level, 0 < P < 1; the interval is 1 - P")
    p.add_argument("--min-count", type=count("--min-count", 1, ROW_LIMIT), default=30, metavar="N",
                   help=f"samples a side needs to be judged, 1 .. {ROW_LIMIT}")
    p.add_argument("--lock", action="append", metavar="NAME", help="only this lock (glob; repeat for several)")
    p.add_argument("--callsite", action="append", metavar="NAME",
                   help="only this call site (glob; repeat for several)")
    p.add_argument("--format", choices=DIFF_FORMATS, default=None,
                   help="output format (default: from the -o extension, else text)")
    p.add_argument("-o", "--output", metavar="FILE", help="write the report to FILE instead of stdout")
    p.add_argument("--resamples", type=count("--resamples", 100, 1_000_000), default=2000, metavar="N",
                   help="bootstrap replicates, 100 .. 1000000")
    p.add_argument("--blocks", type=count("--blocks", 1, 10_000), default=10, metavar="N",
                   help="time blocks per run for the bootstrap, 1 .. 10000")
    p.add_argument("--seed", type=count("--seed", 0, 2 ** 64 - 1), default=0, metavar="N",
                   help="bootstrap seed, 0 .. 2^64-1")
    p.add_argument("--store", metavar="STORE",
                   help="a run store with earlier runs of the baseline's configuration: rows it "
                        "has 3 or more runs of are judged against their run-to-run variation "
                        "(single runs without false alarms; needs kvmscope[runs])")

    p = _command(sub, "plot", "draw a trace (timeline, distributions, heatmaps...)",
                 "Draw one view of a trace into a PNG, SVG or PDF file (format from the "
                 "extension).\nExit status 0, or 2 on error with one line on stderr.",
                 func("cmd_plot"))
    p.add_argument("trace", metavar="TRACE", help="trace directory")
    p.add_argument("--kind", choices=PLOT_KINDS, default="timeline",
                   help="timeline: thread states, lock owner, hand-offs; wait/hold: lock time "
                        "distributions; contention: heatmap of waits over time; exits: exit "
                        "rate; aio/bh/timers: latency distributions; path: request paths, "
                        "stage by stage (kvmscope path)")
    p.add_argument("--window", type=_type(_window, "window"), metavar="START:END",
                   help="time window: absolute ns (1845840947555:1845841947555) or relative to "
                        "the trace start with a unit (10ms:12ms); either side may be empty "
                        "(default: timeline the busiest 1 ms of contention, others the whole trace)")
    p.add_argument("--lock", metavar="NAME", help="only this lock (timeline default: bql)")
    p.add_argument("--by", metavar="GROUP",
                   help="grouping: wait/hold: callsite (default), lock, thread; contention: "
                        "thread (default), lock, callsite; exits: reason (default), device, thread; "
                        "path: block (default when there are AIO requests) or timer")
    p.add_argument("--threads", metavar="NAMES",
                   help="timeline rows, comma-separated (default: every thread with records)")
    p.add_argument("--bins", type=count("--bins", 1, 100_000), default=200, metavar="N",
                   help="time bins of contention/exits, 1 .. 100000")
    p.add_argument("--dpi", type=count("--dpi", 20, 1200), default=120, metavar="N",
                   help="PNG resolution, 20 .. 1200")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="output file: .png, .svg or .pdf")

    p = _command(sub, "export", "export a trace to Perfetto / chrome://tracing JSON",
                 "Write a trace as Chrome trace-event JSON, for https://ui.perfetto.dev and "
                 "chrome://tracing.\nExit status 0, or 2 on error with one line on stderr.",
                 func("cmd_export"))
    p.add_argument("trace", metavar="TRACE", help="trace directory")
    p.add_argument("--perfetto", required=True, metavar="FILE", help="output JSON file")
    p.add_argument("--window", type=_type(_window, "window"), metavar="START:END",
                   help="only rows overlapping this window: absolute ns, or relative to the trace "
                        "start with a unit (10ms:12ms); either side may be empty")
    p.add_argument("--max-events", type=count("--max-events", 0, ROW_LIMIT), default=EXPORT_MAX_EVENTS,
                   metavar="N", help="stop where N events are reached, so that the file stays "
                                     f"loadable; 0: no limit; 0 .. {ROW_LIMIT}")
    _format_option(p, what="what to print: text (one line) or json (path, events, window, cut)")
    add_runs_commands(sub, funcs)        # convert, store, sql, history
    add_path_commands(sub, funcs)        # path
    add_whatif_commands(sub, funcs)      # replay, whatif


# --------------------------------------------------------------------------
# ---- many runs: convert, store, sql, history (run by kvmscope.analysis.runs_cli)

CONVERT_TARGETS = ("parquet", "arrow-file")
CONVERT_COMPRESSIONS = ("default", "zstd", "lz4", "snappy", "none")
SQL_FORMATS = ("text", "csv", "json")
HISTORY_STATS = DIFF_STATS                 # the statistics diff judges




def _label(text):
    key, sep, value = text.partition("=")
    if not sep or not re.match(r"^[A-Za-z0-9_.-]{1,64}$", key.strip()):
        raise ConfigError(f"bad label {text!r}: use KEY=VALUE (e.g. commit=abc123)")
    return text


def _order(text):
    if text != "time" and not (text.startswith("label:") and len(text) > 6):
        raise ConfigError(f"bad order {text!r}: use time or label:KEY")
    return text


def _penalty(text):
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"bad number {text!r} for --penalty") from None
    if not 0 < value <= 1000:
        raise ConfigError(f"--penalty {text} out of range: use 0 < P <= 1000")
    return value


class _ConvertTo(argparse.Action):
    """``--to LAYOUT [OUT]``: the layout, and OUT when it follows."""

    def __call__(self, parser, namespace, values, option_string=None):
        if values[0] not in CONVERT_TARGETS or len(values) > 2:
            parser.error(f"argument --to: use --to {'|'.join(CONVERT_TARGETS)} [OUT], "
                         f"not {' '.join(values)!r}")
        namespace.to = values[0]
        if len(values) == 2:
            if namespace.out is not None and namespace.out != values[1]:
                parser.error(f"two output directories: {namespace.out} and {values[1]}")
            namespace.out = values[1]


def add_runs_commands(sub, funcs=None):
    """Add ``convert``, ``store`` (``add``, ``list``), ``sql`` and ``history`` to *sub*."""
    funcs = funcs or {}

    def func(name):
        return funcs.get(name) or _lazy(".analysis.runs_cli", name)

    p = _command(sub, "convert", "write a trace in the Parquet or Arrow IPC file layout",
                 "Write a trace in the Parquet layout (DuckDB, polars, pandas open it directly) "
                 "or the Arrow IPC file layout, into OUT; without OUT, convert a stream trace "
                 "to Parquet in place (the streams are removed once the Parquet files and "
                 "meta.json are on disk). See docs/runs.md.\n"
                 "Exit status 0, or 2 with one line on stderr.", func("cmd_convert"))
    p.add_argument("trace", metavar="TRACE", help="trace directory")
    p.add_argument("out", nargs="?", metavar="OUT", help="new directory (missing or empty)")
    p.add_argument("--to", nargs="+", action=_ConvertTo, default="parquet", metavar="LAYOUT",
                   help="layout to write: parquet or arrow-file; OUT may follow it "
                        "(--to parquet OUT)")
    p.add_argument("--compression", choices=CONVERT_COMPRESSIONS, default="default",
                   help="compression of the files (default: zstd)")
    _format_option(p, what="what to print: text (one line) or json")

    p = _command(sub, "store", "a store of many runs: add runs, list them",
                 "A run store: a Parquet dataset of many traces, partitioned by run "
                 "(STORE/run=ID/TABLE.parquet). See docs/runs.md.", func("cmd_store_list"))
    actions = p.add_subparsers(dest="store_command", metavar="ACTION",
                               help="add (add runs to the store) or list (list its runs)")
    actions.required = True
    q = _command(actions, "add", "add runs to a store (created if missing)",
                 "Add trace directories to a store, each as one run with its config, host, "
                 "start time and labels. The same run twice is refused; each run is written "
                 "aside and renamed into place, so a killed add leaves no partial run.\n"
                 "Exit status 0, or 2 with one line on stderr (nothing added).",
                 func("cmd_store_add"))
    q.error_prefix = "kvmscope store add"
    q.set_defaults(command="store add")
    q.add_argument("store", metavar="STORE", help="store directory")
    q.add_argument("traces", nargs="+", metavar="TRACE", help="trace directories")
    q.add_argument("--label", action="append", type=_type(_label, "label"), metavar="KEY=VALUE",
                   help="label every run added (commit=abc123); repeat for several")
    q.add_argument("--name", metavar="NAME", help="display name of the run (default: TRACE's name)")
    _format_option(q, what="what to print: text or json")
    q = _command(actions, "list", "list the runs of a store",
                 "List the runs of a store, oldest first.\nExit status 0, or 2 with one line.",
                 func("cmd_store_list"))
    q.error_prefix = "kvmscope store list"
    q.set_defaults(command="store list")
    q.add_argument("store", metavar="STORE", help="store directory")
    q.add_argument("--label", action="append", type=_type(_label, "label"), metavar="KEY=VALUE",
                   help="only runs with this label; repeat for several")
    q.add_argument("--order", type=_type(_order, "order"), default="time", metavar="ORDER",
                   help="time (the runs' start time) or label:KEY")
    _format_option(q, SQL_FORMATS)
    _limit_option(q, "print at most N runs", 0)

    p = _command(sub, "sql", "SQL (DuckDB) over a trace or a store",
                 "Run a DuckDB query over a trace or a store. Every table is a view (threads, "
                 "exits, locks, bh, timers, aio, loop, irqs, losses) with the derived durations "
                 "(wait_ns, hold_ns, ...) and thread_name; over a store each has a run column, "
                 "and the runs view has one row per run. See docs/runs.md.\n"
                 "Exit status 0, or 2 with one line on stderr.", func("cmd_sql"))
    p.add_argument("source", metavar="TRACE_OR_STORE", help="trace or store directory")
    p.add_argument("query", metavar="QUERY", help="the SQL query")
    _format_option(p, SQL_FORMATS)
    _limit_option(p, "print at most N rows", 0)
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")

    p = _command(sub, "history", "each call site over a store's runs, with change points",
                 "Follow each call site's hold (or wait) statistic over the runs of a store, "
                 "in time (or label) order; find change points (ruptures PELT), keep those "
                 "beyond --threshold and --min-delta, print them and optionally plot the "
                 "series. A CI gate: exit 1 when the newest --recent runs start a regression, "
                 "or the newest run alone is beyond the run-to-run variation. See docs/runs.md.\n"
                 "Exit status: 0 no regression, 1 regression, 2 error.", func("cmd_history"))
    p.add_argument("store", metavar="STORE", help="store directory")
    p.add_argument("--metric", choices=DIFF_METRICS, default="hold",
                   help="hold time, or wait time of contended acquisitions")
    p.add_argument("--stat", choices=HISTORY_STATS, default="p50", help="statistic per run")
    p.add_argument("--callsite", action="append", metavar="NAME",
                   help="only this call site (glob; repeat for several)")
    p.add_argument("--lock", action="append", metavar="NAME", help="only this lock (glob)")
    p.add_argument("--label", action="append", type=_type(_label, "label"), metavar="KEY=VALUE",
                   help="only runs with this label; repeat for several")
    p.add_argument("--order", type=_type(_order, "order"), default="time", metavar="ORDER",
                   help="time (the runs' start time) or label:KEY")
    p.add_argument("--threshold", type=_type(_percent, "percent"), default="5%", metavar="PERCENT",
                   help="smallest relative change of a change point, 0%% .. 10000%%")
    p.add_argument("--min-delta", type=duration_ns("--min-delta", 0, 60 * units.NS_PER["s"]),
                   default="100ns", metavar="TIME",
                   help="smallest absolute change of a change point, 0 .. 60s; a bare number is ns")
    p.add_argument("--penalty", type=_type(_penalty, "penalty"), default=4.0, metavar="P",
                   help="PELT penalty, times log(runs), on noise-scaled log values")
    p.add_argument("--min-size", type=count("--min-size", 1, 1000), default=3, metavar="N",
                   help="fewest runs between two change points, 1 .. 1000")
    p.add_argument("--recent", type=count("--recent", 1, ROW_LIMIT), default=5, metavar="N",
                   help="the gate fails on a regression starting in the newest N runs")
    p.add_argument("--min-count", type=count("--min-count", 1, ROW_LIMIT), default=30, metavar="N",
                   help="samples a run needs for its call site to count")
    p.add_argument("--scheduler", metavar="SCHEDULER",
                   help="compute the per-run statistics on Dask: threads, processes, or the "
                        "address of a distributed scheduler (default: pandas in this process)")
    p.add_argument("--plot", metavar="FILE", help="plot the series with the change points "
                                                  "(.png, .svg, .pdf)")
    _format_option(p, SQL_FORMATS, what="text, csv (the change points) or json (everything)")
    p.add_argument("-o", "--output", metavar="FILE", help="write the report to FILE")


# --------------------------------------------------------------------------
# ---- real QEMU: import qemu-log, qemu (run by kvmscope.qemu_cli)



def _address(text):
    if not re.match(r"^0x[0-9a-fA-F]{1,16}$", text.strip()):
        raise ConfigError(f"bad mutex address {text!r} for --bql: use 0x... as the log prints it")
    return "0x" + text.strip()[2:].lower()


def add_qemu_commands(sub):
    """Add ``import`` (``import qemu-log LOG -o TRACE``) and ``qemu`` (run QEMU
    traced, then import its log) to *sub*; docs/qemu.md."""
    compressions = COMPRESSIONS
    p = _command(sub, "import", "convert a QEMU trace log into a kvmscope trace",
                 "Convert the log of QEMU's log trace backend (run with -msg timestamp=on "
                 "-trace qemu_mutex_lock -trace qemu_mutex_locked -trace qemu_mutex_unlock "
                 "-trace kvm_run_exit -D LOG) into a kvmscope trace; see docs/qemu.md.\n"
                 "Exit status: 0, or 2 for a file that is not a QEMU trace log, a log without "
                 "lock events, or an output directory that may not be written.",
                 _lazy(".qemu_cli", "cmd_import"))
    p.add_argument("kind", choices=["qemu-log"], help="what LOG is: qemu-log (QEMU's log trace backend)")
    p.add_argument("log", metavar="LOG", help="the log file (QEMU's -D)")
    p.add_argument("-o", "--output", required=True, metavar="TRACE",
                   help="trace directory: missing, empty, or holding a trace to replace with --force")
    p.add_argument("--force", action="store_true", help="replace the trace already in TRACE")
    p.add_argument("--bql", type=_type(_address, "address"), metavar="ADDRESS",
                   help="address of QEMU's global mutex, when the import cannot recognise it")
    p.add_argument("--qemu-version", metavar="TEXT", help="the QEMU version, recorded in meta.json")
    p.add_argument("--guest", metavar="NAME", help="what ran, shown as the guest in reports "
                                                   "(default: qemu)")
    p.add_argument("--compression", choices=compressions, default="none",
                   help="compress the trace's Arrow buffers")
    _format_option(p, what="summary format: text, or json (what was imported and skipped)")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary")

    p = _command(sub, "qemu", "run a real QEMU with its lock events traced, import the log",
                 "Run QEMU with -msg timestamp=on, a -trace option per event and -D LOG added, "
                 "then import LOG into a kvmscope trace; see docs/qemu.md.\n\n"
                 "  kvmscope qemu -o TRACE -- qemu-system-x86_64 ARGS...\n"
                 "  kvmscope qemu -o TRACE --guest pio-storm --vcpus 2 -n 50000\n"
                 "  kvmscope qemu --list-guests\n\n"
                 "Exit status: 0 QEMU ended well (status 0, its guest reported 0 through "
                 "isa-debug-exit, or stopped at --duration), 1 QEMU or its guest failed (the "
                 "trace is still written), 2 bad input or QEMU could not run, 130 interrupted.",
                 _lazy(".qemu_cli", "cmd_qemu"))
    p.add_argument("-o", "--output", metavar="TRACE",
                   help="trace directory: missing, empty, or holding a trace to replace with --force")
    p.add_argument("--force", action="store_true", help="replace the trace already in TRACE")
    p.add_argument("--events", default="default", metavar="LIST",
                   help="trace events, comma-separated: names and the sets minimal (the mutex "
                        "events and kvm_run_exit) and default (also kvm_vcpu_ioctl, "
                        "thread_pool_submit, thread_pool_complete)")
    p.add_argument("--log", metavar="FILE", help="keep QEMU's log in FILE (default: removed "
                                                 "after the import)")
    p.add_argument("--duration", type=duration_ns("--duration", units.NS_PER["ms"],
                                                  168 * 3600 * units.NS_PER["s"], unit="s"),
                   metavar="TIME", help="stop QEMU cleanly (SIGTERM) after TIME, 1ms .. 168h; "
                                        "a bare number is seconds")
    p.add_argument("--guest", metavar="NAME",
                   help="boot this guest for QEMU (--list-guests): kvmscope composes the "
                        "command line; a QEMU command after -- gives the binary and extra options")
    p.add_argument("--vcpus", type=count("--vcpus", 1, 8), default=1, metavar="N",
                   help="--guest: -smp N, 1 .. 8 (mixed: 1 .. 2)")
    p.add_argument("-n", "--iterations", type=count("--iterations", 0, 2 ** 32 - 1), metavar="N",
                   help="--guest: loop count, 0 .. 4294967295 (default per guest)")
    p.add_argument("--seed", type=count("--seed", 0, 2 ** 32 - 1), default=1, metavar="N",
                   help="--guest: seed, 0 .. 4294967295")
    p.add_argument("--port-burst", type=count("--port-burst", 0, 2 ** 32 - 1), default=8,
                   metavar="N", help="--guest mixed: port writes after each request")
    p.add_argument("--cpu", default="host,-arch-capabilities", metavar="MODEL",
                   help="--guest: QEMU's -cpu (without arch-capabilities: some hosts cannot set "
                        "MSR 0x10a)")
    p.add_argument("--list-guests", action="store_true", help="list the guests for QEMU")
    p.add_argument("--compression", choices=compressions, default="none",
                   help="compress the trace's Arrow buffers")
    _format_option(p, what="summary format: text or json")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary")
    p.add_argument("qemu_command", nargs=argparse.REMAINDER, metavar="-- QEMU ARGS",
                   help="the QEMU command line, binary first")


# --------------------------------------------------------------------------
# ---- request paths: path (run by kvmscope.analysis.paths_cli)

#: ``path --kind`` and ``--sort`` (kvmscope.analysis.paths.KINDS and SORT_KEYS).
PATH_KINDS = ("block", "timer", "all")
PATH_SORT_KEYS = ("total", "start", "late", "decode", "vcpu_bql_wait", "dispatch", "queue", "io",
                  "wakeup", "loop_bql_wait", "pending", "callback", "delivery")




def add_path_commands(sub, funcs=None):
    """Add ``path`` (docs/paths.md) to *sub*."""
    func = (funcs or {}).get("cmd_path") or _lazy(".analysis.paths_cli", "cmd_path")
    p = _command(sub, "path", "follow each block request and timer tick across threads",
                 "Follow every block request (guest OUT exit -> BQL -> AIO queue -> I/O -> "
                 "main-loop wake-up -> completion bottom half -> interrupt -> back in the guest) "
                 "and timer tick (deadline -> main loop -> interrupt -> guest) stage by stage: "
                 "a summary per stage with percentiles and whom the waits were behind, then "
                 "the slowest requests in full. --threads keeps the requests that went "
                 "through those threads (vCPU, AIO worker, main loop), --callsite those that "
                 "waited behind those call sites. See docs/paths.md.\n"
                 "Exit status 0, or 2 with one line on stderr.", func)
    p.add_argument("trace", metavar="TRACE", help="trace directory")
    p.add_argument("--kind", choices=PATH_KINDS, default="all",
                   help="block requests, timer ticks, or all the trace has")
    _format_option(p, what="text, or json (raw ns values)")
    _limit_option(p, "requests shown in full, slowest first (default: 10)", None)
    add_selection_options(p, sort_keys=PATH_SORT_KEYS, what="requests shown in full")


# --------------------------------------------------------------------------
# ---- what if: replay, whatif (run by kvmscope.analysis.whatif_cli)

#: ``replay --policy`` (kvmscope.analysis.reexec_engine.POLICIES).
WHATIF_POLICIES = ("barging", "fifo")
WHATIF_FORMATS = ("text", "markdown", "json")




def _callsite_value(option, parse, example):
    def convert(text):
        name, sep, value = text.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ConfigError(f"{option} {text!r}: use CALLSITE=VALUE, e.g. {example}")
        return name.strip(), parse(value.strip(), text)
    return _type(convert, "CALLSITE=VALUE")


def _factor(value, text):
    try:
        f = float(value)
    except ValueError:
        raise ConfigError(f"--scale-hold {text!r}: the factor is not a number") from None
    if not 0 <= f <= 1000:
        raise ConfigError(f"--scale-hold {text} out of range: use a factor 0 .. 1000")
    return f


def _hold_ns(value, text):
    ns = units.parse_duration(value, "ns", "--add-hold")
    if not 0 <= ns <= units.NS_PER["s"]:
        raise ConfigError(f"--add-hold {text} out of range: use 0 .. 1s")
    return int(ns)


def _add_whatif_options(p):
    g = p.add_argument_group("what if")
    g.add_argument("--scale-hold", action="append", metavar="CALLSITE=F",
                   type=_callsite_value("--scale-hold", _factor, "pio:blk=0.5"),
                   help="multiply the call site's hold times by F, 0 .. 1000 (main:dispatch: the "
                        "whole dispatch); repeat for several")
    g.add_argument("--add-hold", action="append", metavar="CALLSITE=TIME",
                   type=_callsite_value("--add-hold", _hold_ns, "pio:debugport=2us"),
                   help="hold the BQL TIME longer at the call site, 0 .. 1s, as run "
                        "--inject-hold does; a bare number is ns; repeat for several")
    g.add_argument("--lockless", action="append", metavar="DEVICE",
                   help="dispatch the device without the BQL, as run --lockless; repeat")
    g.add_argument("--vcpus", type=setting("vcpus"), metavar="N",
                   help=f"vCPUs; extra ones run the recorded vCPUs' streams again, "
                        f"{SETTINGS['vcpus'].describe()}")
    g.add_argument("--aio-threads", type=setting("aio_threads"), metavar="N",
                   help=f"AIO worker threads, {SETTINGS['aio_threads'].describe()}")
    g.add_argument("--timer-period-us", type=count("--timer-period-us", 50, 60_000_000),
                   metavar="N", help="period the guests program into the timer device, us, "
                                     "50 .. 60000000")
    p.add_argument("--policy", choices=WHATIF_POLICIES, default="barging",
                   help="how the BQL picks its next owner: barging (glibc's mutex, as "
                        "recorded) or fifo (a ticket lock)")
    p.add_argument("--cpus", type=count("--cpus", 0, 4096), metavar="N",
                   help="host CPUs the predicted run's threads share (default: the recording "
                        "host's; 0: a CPU per thread), 0 .. 4096")
    p.add_argument("--seed", type=count("--seed", 0, 2 ** 32 - 1), metavar="N",
                   help="situations the recording did not have get the median of the "
                        "recorded ones; with a seed, a draw among them (0 .. 2^32-1)")


def add_whatif_commands(sub, funcs=None):
    """Add ``replay`` and ``whatif`` (docs/whatif.md) to *sub*."""
    funcs = funcs or {}
    p = _command(sub, "replay", "re-execute a trace, changed or not, into a predicted trace",
                 "Re-execute a recorded trace in a deterministic model of its threads (vCPU "
                 "exits, BQL, main loop, timers, bottom halves, AIO) and write the predicted "
                 "run as a trace: every command reads it. Without a change it reproduces the "
                 "recording; with changes (what if) it predicts the run they would give. "
                 "See docs/whatif.md.\nExit status 0, or 2 with one line on stderr.",
                 funcs.get("cmd_replay") or _lazy(".analysis.whatif_cli", "cmd_replay"))
    p.add_argument("trace", metavar="TRACE", help="recorded trace directory")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="predicted trace directory: missing, empty, or holding a trace to "
                        "replace with --force")
    p.add_argument("--force", action="store_true", help="replace the trace already in OUT")
    p.add_argument("--compression", choices=COMPRESSIONS, default="none",
                   help="compress the predicted trace's Arrow buffers")
    _add_whatif_options(p)
    p.add_argument("--engine", choices=("model", "core"), default="model",
                   help="model: re-execute in the deterministic model (default); core: run "
                        "the model's schedules on real threads through the compiled core (BQL, "
                        "main loop, timers, bottom halves, AIO pool), without KVM, and record "
                        "the run (docs/whatif.md)")
    _format_option(p, what="summary: text (two lines) or json")

    p = _command(sub, "whatif", "predict what a change buys: a table against the recording",
                 "Re-execute a recorded trace with the given changes and print the predicted "
                 "figures (exits/s, BQL wait, contended share, request latency...) beside the "
                 "recorded ones, run-wide and per call site. --rank instead tries, for each "
                 "call site, its critical section shorter (--factor) and its device without "
                 "the BQL, and ranks the fixes by the guest progress they buy. See "
                 "docs/whatif.md.\nExit status 0, or 2 with one line on stderr.",
                 funcs.get("cmd_whatif") or _lazy(".analysis.whatif_cli", "cmd_whatif"))
    p.add_argument("trace", metavar="TRACE", help="recorded trace directory")
    _add_whatif_options(p)
    p.add_argument("--seeds", type=count("--seeds", 2, 64), metavar="N",
                   help="re-execute with seeds 0 .. N-1 and print each figure's median over "
                        "them with its range: the prediction's uncertainty, 2 .. 64")
    p.add_argument("--rank", action="store_true",
                   help="what should we optimise: rank every call site's fixes")
    p.add_argument("--factor", type=_type(lambda t: _factor(t, t), "factor"), default=0.5,
                   metavar="F", help="--rank: the hold time factor tried, 0 .. 1000")
    _limit_option(p, "--rank: fixes shown (default: all)", 0)
    _format_option(p, WHATIF_FORMATS, what="output format (json carries raw values)")


# --------------------------------------------------------------------------
# the parser and main

def build_parser(prog="kvmscope", commands=("recording", "analysis"), funcs=None):
    """The `kvmscope` argument parser, every command registered explicitly.

    Parameters
    ----------
    prog : str
    commands : tuple of str
        ``recording`` (run, demo, guests, info) and/or ``analysis`` (report,
        validate, diff, plot, export).
    funcs : dict, optional
        Analysis command functions by name (see :func:`add_analysis_commands`).

    Examples
    --------
    >>> args = build_parser().parse_args(["run", "pio-storm", "--duration", "2s", "-m", "32M"])
    >>> args.duration, args.memory, args.func.__name__
    (2.0, 33554432, 'cmd_run')
    """
    what = ("Record and analyse lock contention inside a KVM VMM." if "recording" in commands
            else "Analyse kvmscope traces (no compiled core needed).")
    parser = CommandParser(prog=prog, formatter_class=HelpFormatter,
                           description=what + "\n"
                                       "Exit status: 0 success, 1 failed guest / violations / "
                                       "regression, 2 bad input or unusable host, 3 validate: "
                                       "incomplete data, 130 interrupted.")
    parser.error_prefix = "kvmscope"
    parser.add_argument("--version", action="version", version=f"kvmscope {__version__}")
    parser.add_argument("--no-pager", action="store_true",
                        help="as git: report, validate and diff on a terminal are paged with "
                             "$KVMSCOPE_PAGER, else $PAGER, else less -FRX; this prints instead "
                             "(a pipe or a file is never paged)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    if "recording" in commands:
        p = _command(sub, "run", "run a guest and record a trace",
                     "Run a built-in guest on KVM and record its trace.\n"
                     "Exit status: 0 the guest ended well, 1 a guest or fatal-exit error, "
                     "2 bad input or unusable /dev/kvm, 130 interrupted (trace complete).", cmd_run)
        _add_run_options(p)
        p = _command(sub, "demo", "record a demo trace (pio-storm, 2 vCPUs) and report on it",
                     "Record pio-storm on 2 vCPUs into DIR and print its report.", cmd_demo)
        _add_run_options(p, demo=True)
        p = _command(sub, "guests", "list the built-in guest programs",
                     "List the built-in guest programs.", cmd_guests)
        _format_option(p, what="text, or json (with default iterations and minimum memory)")
        p = _command(sub, "info", "show KVM capabilities and the clock kvmscope would use",
                     "Show the KVM device's capabilities and the clock a recording would use.",
                     cmd_info)
        p.add_argument("--kvm-device", default="/dev/kvm", metavar="PATH", help="KVM device node")
        _format_option(p)
        add_qemu_commands(sub)          # import qemu-log, qemu
    if "analysis" in commands:
        add_analysis_commands(sub, funcs)
    return parser


def error_line(e):
    """One line saying what failed: ``path: reason`` for OS errors."""
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def run_command(args):
    """Run a parsed command; bad input and host errors become one line and status 2."""
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except (KvmscopeError, OSError) as e:
        print(f"kvmscope {args.command}: error: {error_line(e)}", file=sys.stderr)
        return EXIT_USAGE


def main(argv=None, parser=None):
    """Entry point of `kvmscope`; returns the exit status.

    Examples
    --------
    >>> main(["run", "pio-storm", "--vcpus", "100"])    # doctest: +SKIP
    kvmscope run: error: --vcpus 100 out of range: use 1 .. 64
    2
    """
    parser = parser or build_parser()
    try:
        args = parser.parse_args(None if argv is None else [str(a) for a in argv])
    except SystemExit as e:                 # --help and --version (0), usage errors (2)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_USAGE)
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
