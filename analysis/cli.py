"""The ``kvmscope report`` and ``kvmscope validate`` commands.

The kvmscope CLI calls :func:`register` to add them to its subcommands;
``python -m kvmscope.analysis`` runs them through :func:`main` without the
compiled core.  Each command returns the process exit status.
"""

import argparse
import os
import sys

from . import report as _report
from .trace import Trace, TraceError

#: ``kvmscope validate`` exit statuses.
EXIT_OK, EXIT_VIOLATIONS, EXIT_UNREADABLE = 0, 1, 2


def _write(text, stream=None):
    """Write to stdout, tolerating a reader that went away (``| head``)."""
    stream = stream or sys.stdout
    try:
        stream.write(text)
        stream.flush()
    except BrokenPipeError:
        # Keep the interpreter from complaining again at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())


def _load(args):
    try:
        return Trace.load(args.trace)
    except TraceError as e:
        print(f"kvmscope {args.command}: error: {e}", file=sys.stderr)
        return None


def cmd_report(args):
    """Run ``kvmscope report``; returns 0, or 2 if the trace is unreadable."""
    trace = _load(args)
    if trace is None:
        return EXIT_UNREADABLE
    top = args.top
    if top is None:
        top = 20 if args.format in ("text", "markdown") else 0
    built = _report.build(trace, args.section or "all")
    _write(_report.render(trace, built, args.format, top=top,
                          all_columns=args.all_columns))
    return EXIT_OK


def cmd_validate(args):
    """Run ``kvmscope validate``: 0 clean, 1 violations, 2 unreadable."""
    trace = _load(args)
    if trace is None:
        return EXIT_UNREADABLE
    for w in trace.warnings:
        print(f"warning: {w}", file=sys.stderr)
    v = trace.check(tolerance_ns=args.tolerance_ns)
    shown = v if not args.limit else v.head(args.limit)
    if len(shown):
        names = dict(zip(trace.threads["thread"], trace.threads["name"]))
        who = shown["thread"].map(names).fillna(shown["thread"].astype(str))
        lines = (shown["table"] + ".arrows row " + shown["row"].astype(str)
                 + " (" + who.astype(str) + " at " + shown["ts_ns"].astype(str)
                 + " ns): " + shown["kind"] + ": " + shown["detail"])
        _write("\n".join(lines) + "\n")
        if len(v) > len(shown):
            _write(f"... {len(v) - len(shown)} more (--limit 0 shows all)\n")
    n = trace.num_records
    if v.empty:
        _write(f"{args.trace}: OK: {n} records, no violations\n")
        return EXIT_OK
    kinds = v["kind"].value_counts()
    detail = ", ".join(f"{c} {k}" for k, c in kinds.items())
    _write(f"{args.trace}: {len(v)} violations in {n} records ({detail})\n")
    return EXIT_VIOLATIONS


def register(subparsers):
    """Add the ``report`` and ``validate`` subcommands.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        From ``parser.add_subparsers()``; each command sets ``args.func``,
        which returns the exit status.

    Examples
    --------
    >>> import argparse
    >>> parser = argparse.ArgumentParser(prog="kvmscope")
    >>> register(parser.add_subparsers(dest="command"))
    >>> args = parser.parse_args(["validate", "traces/demo"])
    >>> args.func.__name__
    'cmd_validate'
    """
    p = subparsers.add_parser(
        "report", help="statistics of a trace (exits, locks, bh, AIO...)",
        description="Print perf-kvm-stat / lock_stat style statistics of a "
                    "trace directory.")
    p.add_argument("trace", help="trace directory")
    p.add_argument("--format", choices=_report.FORMATS, default="text",
                   help="output format (default: text)")
    p.add_argument("--top", type=int, metavar="N", default=None,
                   help="rows per section (default: 20 for text and "
                        "markdown, all for json and csv; 0: all)")
    p.add_argument("--section", action="append",
                   choices=list(_report.SECTIONS) + ["all"],
                   help="section to show; repeat for several "
                        "(default: all)")
    p.add_argument("--all-columns", action="store_true",
                   help="text/markdown: show every column")
    p.set_defaults(func=cmd_report)

    v = subparsers.add_parser(
        "validate", help="check a trace's invariants",
        description="Check a trace directory: schema, one lock owner at a "
                    "time, matched releases, per-thread time order, stage "
                    "order. Exit status: 0 clean, 1 violations, "
                    "2 unreadable trace.")
    v.add_argument("trace", help="trace directory")
    v.add_argument("--limit", type=int, metavar="N", default=100,
                   help="print at most N violations (default 100; 0: all)")
    v.add_argument("--tolerance-ns", type=int, metavar="NS", default=0,
                   help="ignore lock-owner overlaps up to NS long "
                        "(default 0: strict)")
    v.set_defaults(func=cmd_validate)

    # Further commands live beside the analysis they drive: each of these
    # modules has register_command(subparsers).
    import importlib
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__package__}.{name}")
        except ImportError:
            continue
        register_command = getattr(module, "register_command", None)
        if register_command is not None:
            register_command(subparsers)


#: modules that add a command: ``regress`` (``diff``, regression reports), ``plot``
#: (matplotlib views), ``perfetto`` (``export`` to Chrome/Perfetto JSON).
_COMMAND_MODULES = ("regress", "plot", "perfetto")


def main(argv=None):
    """Entry point of ``python -m kvmscope.analysis``; returns the status."""
    parser = argparse.ArgumentParser(
        prog="python -m kvmscope.analysis",
        description="kvmscope trace analysis (no compiled core needed).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    register(sub)
    args = parser.parse_args(argv)
    return args.func(args)
