"""The analysis commands of the kvmscope CLI: ``report``, ``validate``,
``diff``, ``plot`` and ``export``.

Their options, ranges and help are defined with every other command's in
:mod:`kvmscope.cli` (which parses them without importing pandas); the
functions here run them and return the exit status. ``python -m
kvmscope.analysis`` runs them through :func:`main` without the compiled core.
"""

import json
import os
import sys

from .. import cli as _cli
from ..errors import KvmscopeError
from . import render
from .trace import Trace, TraceError

#: ``kvmscope validate`` exit statuses.
EXIT_OK, EXIT_VIOLATIONS, EXIT_UNREADABLE, EXIT_INCOMPLETE = 0, 1, 2, 3


def _write(text, stream=None):
    """Write to stdout, tolerating a reader that went away (``| head``)."""
    render.emit(text, stream, pager=False)


def _show(args, text):
    """Write a command's output to stdout: through the pager on a terminal
    unless ``--no-pager``; as it is to a pipe or a file."""
    render.emit(text, pager=not getattr(args, "no_pager", False))


def _style(args):
    """Width and colour of text output: the terminal's, else plain."""
    if getattr(args, "format", "text") not in (None, "text"):
        return {"width": None, "color": False}
    return render.terminal_style(sys.stdout)


def _fail(command, e):
    print(f"kvmscope {command}: error: {_cli.error_line(e)}", file=sys.stderr)
    return _cli.EXIT_USAGE


def _load(args):
    try:
        return Trace.load(args.trace)
    except TraceError as e:
        print(f"kvmscope {args.command}: error: {e}", file=sys.stderr)
        return None


def cmd_report(args):
    """Run ``kvmscope report``; returns 0, or 2 if the trace is unreadable."""
    from . import report as _report
    trace = _load(args)
    if trace is None:
        return EXIT_UNREADABLE
    top = args.limit
    if top is None:
        top = 20 if args.format in ("text", "markdown") else 0
    sel = selection(args)
    built = _report.build(trace, args.section, sel)
    _show(args, _report.render(trace, built, args.format, top=top,
                               all_columns=args.all_columns, selection=sel, **_style(args)))
    return EXIT_OK


def selection(args):
    """The report filters of parsed *args* (``--window``, ``--threads``,
    ``--callsite``, ``--sort``, ``--limit``) as a Selection."""
    from .select import Selection
    return Selection(window=getattr(args, "window", None), threads=getattr(args, "threads", None),
                     callsites=getattr(args, "callsites", None), sort=getattr(args, "sort", None),
                     limit=getattr(args, "limit", None))


def cmd_validate(args):
    """Run ``kvmscope validate``: 0 clean, 1 violations, 2 unreadable, 3 no
    violation in the data the trace covers but the data is incomplete."""
    from .replay import describe_coverage, is_complete
    trace = _load(args)
    if trace is None:
        return EXIT_UNREADABLE
    for w in trace.warnings:
        print(f"warning: {w}", file=sys.stderr)
    try:
        v = trace.check(tolerance_ns=args.tolerance_ns)
        complete = is_complete(trace)
        gaps = [] if complete else describe_coverage(trace)
    except TraceError as e:
        print(f"kvmscope {args.command}: error: {e}", file=sys.stderr)
        return EXIT_UNREADABLE
    shown = v if not args.limit else v.head(args.limit)
    # rows are named in the file that holds them (streams, Parquet or Arrow file)
    from .schema import LAYOUTS
    suffix = LAYOUTS.get(trace.meta.get("layout") or "arrows", ".arrows")
    doc = render.Document()
    if len(shown):
        names = dict(zip(trace.threads["thread"], trace.threads["name"]))
        who = shown["thread"].map(names).fillna(shown["thread"].astype(str))
        where = shown["table"] + suffix + " row " + shown["row"].astype(str)
        lines = (where + " (" + who.astype(str) + " at "
                 + shown["ts_ns"].astype(str) + " ns): " + shown["kind"]
                 + ": " + shown["detail"])
        doc.block("\n".join(lines))
        if len(v) > len(shown):
            doc.line(f"... {len(v) - len(shown)} more (--limit 0 shows all)")
    # How the data is incomplete, in plain words: checks skip what it
    # explains.
    for gap in gaps:
        doc.line(gap, style="yellow")
    n = trace.num_records
    if v.empty and complete:
        doc.line(f"{args.trace}: OK: {n} records, no violations",
                 style="green")
        _show(args, doc.render(**_style(args)))
        return EXIT_OK
    if v.empty:
        doc.line(f"{args.trace}: INCOMPLETE: {n} records, no violations in "
                 "the data they cover", style="yellow")
        _show(args, doc.render(**_style(args)))
        return EXIT_INCOMPLETE
    kinds = v["kind"].value_counts()
    if len(v) > 1:
        first = v.groupby("kind", sort=False)[["table", "row"]].first()
        doc.line().line("Violations by kind", style="bold")
        doc.table(["kind", "violations", "first"],
                  [[k, str(c), f"{first.at[k, 'table']}{suffix} row "
                    f"{first.at[k, 'row']}"] for k, c in kinds.items()],
                  right={1}, drop=(2,))
    detail = ", ".join(f"{c} {k}" for k, c in kinds.items())
    doc.line(f"{args.trace}: {len(v)} violations in {n} records ({detail})"
             + ("" if complete else "; the data is incomplete"),
             style="bold red")
    _show(args, doc.render(**_style(args)))
    return EXIT_VIOLATIONS


def validate_command(args):
    """Run ``kvmscope validate`` in the ``--format`` asked for."""
    return cmd_validate_json(args) if args.format == "json" else cmd_validate(args)


def cmd_validate_json(args):
    """``kvmscope validate --format json``: one object on stdout, ``trace``,
    ``records``, ``violations`` (the count), ``by_kind``, ``rows`` (at most
    ``--limit``: table, row, thread, thread_name, ts_ns, kind, detail),
    ``complete`` and ``coverage`` (how the data is incomplete), ``warnings``
    and ``exit_status``, as in text: 0 clean, 1 violations, 3 no violation
    in incomplete data; an unreadable trace is one line on stderr and 2."""
    from .replay import describe_coverage, is_complete
    trace = _load(args)
    if trace is None:
        return EXIT_UNREADABLE
    try:
        v = trace.check(tolerance_ns=args.tolerance_ns)
        complete = is_complete(trace)
        gaps = [] if complete else describe_coverage(trace)
    except TraceError as e:
        return _fail(args.command, e)
    shown = v if not args.limit else v.head(args.limit)
    names = dict(zip(trace.threads["thread"], trace.threads["name"]))
    rows = json.loads(shown.to_json(orient="records"))
    for row in rows:
        row["thread_name"] = names.get(row["thread"])
    status = EXIT_VIOLATIONS if not v.empty else (EXIT_OK if complete else EXIT_INCOMPLETE)
    doc = {"trace": os.fspath(args.trace), "records": int(trace.num_records), "violations": len(v),
           "by_kind": {k: int(c) for k, c in v["kind"].value_counts().items()},
           "rows": rows, "complete": bool(complete), "coverage": list(gaps),
           "warnings": list(trace.warnings), "exit_status": status}
    _show(args, json.dumps(doc, indent=1) + "\n")
    return status


def _write_out(text, path):
    if path and path != "-":
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return
    _write(text)


def _diff_format(args):
    if args.format:
        return args.format
    ext = os.path.splitext(args.output or "")[1].lower()
    return {".html": "html", ".htm": "html", ".md": "markdown",
            ".json": "json"}.get(ext, "text")


def cmd_diff(args):
    """Run ``kvmscope diff``: 0 no regression, 1 regression, 2 error."""
    from .regress import DiffError, compare
    base, new = args.base, args.vs
    if new is None:
        if len(base) != 2:
            return _fail("diff", "give the candidate runs after --vs "
                                 "(BASE... --vs NEW...), or exactly BASE NEW")
        base, new = base[:1], base[1:]
    try:
        result = compare(
            base, new, metric=args.metric, stat=args.stat,
            threshold=args.threshold, min_delta_ns=args.min_delta,
            alpha=args.alpha, min_count=args.min_count, lock=args.lock,
            callsite=args.callsite, resamples=args.resamples,
            blocks=args.blocks, seed=args.seed, store=getattr(args, "store", None))
        fmt = _diff_format(args)
        if args.output and args.output != "-":
            _write_out(result.render(fmt), args.output)
        else:
            _show(args, result.render(fmt, **(
                render.terminal_style(sys.stdout) if fmt == "text"
                else {})))
    except (TraceError, DiffError, OSError, KvmscopeError) as e:
        return _fail("diff", e)
    if result.table.empty:
        print("kvmscope diff: warning: no lock records to compare",
              file=sys.stderr)
    return result.exit_status


def _window(args, trace):
    return args.window.resolve(trace.start_ns, trace.end_ns) if args.window else None


def cmd_plot(args):
    """Run ``kvmscope plot``: 0 drawn; 1 nothing to draw (the file, which
    says so, is written and one line on stderr says why); 2 with one line
    on stderr for a trace, option or file that is wrong."""
    from . import plot
    try:
        plot._check_format(args.output)
        trace = Trace.load(args.trace)
        window = _window(args, trace)
        kind = args.kind
        if kind == "timeline":
            fig = plot.plot_timeline(trace, window=window, lock=args.lock or "bql",
                                     threads=args.threads.split(",")
                                     if args.threads else None)
        elif kind in ("wait", "hold"):
            fig = plot.plot_distributions(trace, kind, by=args.by or "callsite",
                                          lock=args.lock, window=window)
        elif kind == "contention":
            fig = plot.plot_contention(trace, by=args.by or "thread",
                                       lock=args.lock, window=window,
                                       bins=args.bins)
        elif kind == "exits":
            fig = plot.plot_exit_rate(trace, by=args.by or "reason",
                                      window=window, bins=args.bins)
        elif kind == "aio":
            fig = plot.plot_aio_latency(trace, window=window)
        elif kind == "bh":
            fig = plot.plot_bh_latency(trace, window=window)
        elif kind == "path":
            fig = plot.plot_request_paths(trace, kind=args.by, window=window)
        else:
            fig = plot.plot_timer_lateness(trace, window=window)
        plot.save(fig, args.output, dpi=args.dpi)
    except (TraceError, ValueError, OSError) as e:
        return _fail("plot", e)
    why = plot.no_data(fig)
    if why:
        # Status 1, as validate's for what a script should notice.
        print(f"kvmscope plot: no data: {why}; {args.output} says so",
              file=sys.stderr)
        return 1
    return EXIT_OK


def cmd_export(args):
    """Run ``kvmscope export``; returns 0, or 2 with one line on stderr."""
    from .perfetto import export_perfetto
    try:
        trace = Trace.load(args.trace)
        info = export_perfetto(trace, args.perfetto, window=_window(args, trace),
                               max_events=args.max_events or None)
    except (TraceError, ValueError, OSError) as e:
        return _fail("export", e)
    if info["cut_ns"] is not None:
        print(f"kvmscope export: more than {args.max_events:,} events: "
              f"exported {(info['cut_ns'] - info['window'][0]) / 1e6:.3f} ms "
              f"from the window start (--window to choose, --max-events 0 "
              "for all)", file=sys.stderr)
    if args.format == "json":
        _write(json.dumps({**info, "path": os.fspath(info["path"])}, indent=1) + "\n")
        return EXIT_OK
    print(f"{info['path']}: {info['events']:,} events"
          + (f", {info['clamped_slices']:,} slices shortened to nest"
             if info["clamped_slices"] else "")
          + "; open it in https://ui.perfetto.dev")
    return EXIT_OK


#: The command functions :func:`kvmscope.cli.add_analysis_commands` binds.
COMMANDS = {"cmd_report": cmd_report, "validate_command": validate_command,
            "cmd_diff": cmd_diff, "cmd_plot": cmd_plot, "cmd_export": cmd_export}

# ---- many runs: convert, store, sql, history
from . import runs_cli as _runs_cli  # noqa: E402  (the command bodies)
COMMANDS.update({"cmd_convert": _runs_cli.cmd_convert, "cmd_store_add": _runs_cli.cmd_store_add,
                 "cmd_store_list": _runs_cli.cmd_store_list, "cmd_sql": _runs_cli.cmd_sql,
                 "cmd_history": _runs_cli.cmd_history})

# ---- request paths: path
from . import paths_cli as _paths_cli  # noqa: E402  (the command body)
COMMANDS["cmd_path"] = _paths_cli.cmd_path

# ---- what if: replay, whatif
from . import whatif_cli as _whatif_cli  # noqa: E402  (the command bodies)
COMMANDS.update({"cmd_replay": _whatif_cli.cmd_replay, "cmd_whatif": _whatif_cli.cmd_whatif})


def register(subparsers):
    """Add the analysis commands to another CLI's subcommands.

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
    'validate_command'
    """
    _cli.add_analysis_commands(subparsers, COMMANDS)


def main(argv=None):
    """Entry point of ``python -m kvmscope.analysis``; returns the status."""
    parser = _cli.build_parser(prog="python -m kvmscope.analysis",
                               commands=("analysis",), funcs=COMMANDS)
    return _cli.main(argv, parser)
