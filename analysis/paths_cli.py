"""``kvmscope path``: follow each block request and timer tick across
threads.  Options are defined in :mod:`kvmscope.cli`; the work is done by
:mod:`~kvmscope.analysis.paths`; this module chooses the rows and lays
them out as text or JSON.
"""

import json
import sys

import numpy as np

from .. import cli as _cli
from .. import units
from ..errors import KvmscopeError
from . import paths as _paths
from . import render

EXIT_OK, EXIT_USAGE = 0, 2

#: ``--kind`` choices.
KIND_CHOICES = _paths.KINDS + ("all",)
#: What each kind is called in the output.
TITLE = {"block": "Block requests", "timer": "Timer ticks"}
ONE = {"block": "block request", "timer": "timer tick"}
#: Slowest paths shown in full by default.
DEFAULT_LIMIT = 10


def _fail(e):
    print(f"kvmscope path: error: {_cli.error_line(e)}", file=sys.stderr)
    return EXIT_USAGE


def _dur(ns):
    import pandas as pd
    return "-" if ns is None or pd.isna(ns) else units.format_duration(ns, sep="")


def kinds_to_show(trace, kind):
    """The kinds of path ``--kind`` asks for that *trace* can show; a
    ConfigError naming the table that is missing when it cannot."""
    from ..errors import ConfigError
    asked = _paths.KINDS if kind in (None, "all") else (kind,)
    follow = {"block": "block requests", "timer": "timer ticks"}
    shown = [k for k in asked if trace.arrow(_paths.NEEDS[k][0]).num_rows]
    if not shown:
        tables = " and ".join(f"the {_paths.NEEDS[k][0]} table" for k in asked)
        raise ConfigError(f"{trace.path}: no {' or '.join(follow[k] for k in asked)} to "
                          f"follow: {tables} {'has' if len(asked) == 1 else 'have'} no rows")
    for k in shown:
        missing = _paths.missing_tables(trace, k)
        if missing:
            raise ConfigError(f"{trace.path}: {follow[k]} need the {missing[0]} table, "
                              "which has no rows")
    return shown


def build(trace, kinds, selection=None, sort="total", limit=DEFAULT_LIMIT):
    """The paths to show: per kind ``(all paths after the filters, summary,
    slowest paths)``.

    Parameters
    ----------
    trace : Trace
    kinds : list of str
    selection : kvmscope.analysis.select.Selection, optional
        ``window``, ``threads`` and ``callsites`` filters.
    sort : str
        One of :data:`paths.SORT_KEYS`.
    limit : int
        Paths shown in full (0: all).
    """
    built = {}
    tables = {k: _paths.request_paths(trace, k) for k in kinds}
    window = threads = callsites = None
    if selection is not None:
        window = selection.bounds(trace)
        threads = selection.thread_names(trace)
        if selection.callsites is not None:
            callsites = _paths.select_callsites(selection.callsites, tables.values())
    for kind, table in tables.items():          # a loop over kinds
        table = _paths.filter_paths(table, window, threads, callsites)
        ordered = _paths.sort_paths(table, sort)
        built[kind] = (table, _paths.summary(table), ordered.head(limit) if limit else ordered)
    return built


def _stage_rows(kind, summary):
    rows = []
    for r in summary.itertuples(index=False):
        behind = f"{r.behind} ({r.behind_pct:.0f}%)" if r.behind else ""
        rows.append([r.stage, r.what, f"{r.requests:,}", _dur(r.mean_ns), _dur(r.p50_ns),
                     _dur(r.p99_ns), _dur(r.max_ns),
                     "-" if np.isnan(r.share_pct) else f"{r.share_pct:.1f}%", behind])
    return rows


def _who(row, stage):
    holder = row[f"{stage}_holder"]
    if holder is None or holder != holder or holder == _paths.NONE:
        return ""
    text = f"behind {holder} {row[f'{stage}_holder_site']}"
    if stage == "queue" and row.get("queue_holder_req") is not None \
            and row["queue_holder_req"] == row["queue_holder_req"]:
        text += f" req {int(row['queue_holder_req'])}"
    return text


def _path_block(trace, kind, row):
    """One path in full: a heading line and a line per stage."""
    start = row["start_ns"]
    at = "" if start is None or start != start else \
        f" at {units.format_duration(int(start) - trace.start_ns, sep='')}"
    if kind == "block":
        what = (f"req {row['req']} ({row['thread_name']} {row['op']} {row['length']} B, "
                f"{row['worker_name']})")
    else:
        what = f"tick of {row['name']} ({row['thread_name']}; late {_dur(row['late_ns'])})"
    total = row["total_ns"]
    head = f"{what}{at}: {_dur(total)} end to end" if total == total and total is not None \
        else f"{what}{at}: end to end unknown (stages not matched are -)"
    lines = [head]
    width = max(len(s) for s in _paths.STAGES[kind])
    for stage in _paths.STAGES[kind]:             # a loop over stages
        ns = row[f"{stage}_ns"]
        who = _who(row, stage) if stage in _paths.WAITS[kind] else ""
        lines.append(f"    {stage:<{width}}  {_dur(ns):>8}  {who}".rstrip())
    return lines


def render_text(trace, built, sort, style, selection_text=""):
    """The text of ``kvmscope path``."""
    config = trace.meta.get("config") or {}
    doc = render.Document()
    doc.line(f"trace {trace.path}: state {trace.state}, guest {config.get('guest', '?')}, "
             f"{units.format_duration(trace.duration_ns, sep='')}", style="bold")
    if selection_text:
        doc.line(f"selected: {selection_text}")
    for kind, (table, summary, slowest) in built.items():   # a loop over kinds
        matched = int(table["matched"].sum())
        doc.line()
        doc.line(f"{TITLE[kind]}: {len(table):,} paths, every stage matched in {matched:,}",
                 style="bold")
        unmatched = [f"{r.missing} {r.stage}" for r in summary.itertuples(index=False)
                     if r.missing and r.stage != "total"]
        if unmatched:
            doc.line("not matched (records missing): " + ", ".join(unmatched), style="yellow")
        if not len(table):
            continue
        doc.table(["stage", "from -> to", "requests", "mean", "p50", "p99", "max", "share",
                   "waited behind (most)"], _stage_rows(kind, summary),
                  right={2, 3, 4, 5, 6, 7}, drop=(1, 8, 3, 4))
        if len(slowest):
            doc.line()
            by = "time" if sort == "start" else sort
            many = len(slowest) > 1
            doc.line(f"{'First' if sort == 'start' else 'Slowest'} "
                     + (f"{len(slowest)} {TITLE[kind].lower()}" if many else ONE[kind])
                     + f" (by {by})", style="bold")
            lines = []
            for _, row in slowest.iterrows():      # the few rows shown in full
                lines.extend(_path_block(trace, kind, row))
            doc.block("\n".join("  " + line for line in lines))
            if len(slowest) < len(table):
                doc.line(f"... {len(table) - len(slowest):,} more (--limit 0 shows all)")
    return doc.render(**style)


def _records(df):
    return json.loads(df.to_json(orient="records"))


def render_json(trace, built, sort, selection_text=""):
    """``kvmscope path --format json``: one object, raw ns values."""
    doc = {"trace": str(trace.path), "state": trace.state, "start_ns": trace.start_ns,
           "sort": sort, "selection": selection_text}
    for kind, (table, summary, slowest) in built.items():
        doc[kind] = {"paths": len(table), "matched": int(table["matched"].sum()),
                     "stages": list(_paths.STAGES[kind]), "summary": _records(summary),
                     "slowest": _records(slowest)}
    return json.dumps(doc, indent=1) + "\n"


def cmd_path(args):
    """Run ``kvmscope path``: 0, or 2 with one line on stderr (an unreadable
    trace, a trace without the tables a path needs, an unknown thread or
    call site, a window outside the trace)."""
    from .select import Selection
    from .trace import Trace
    try:
        trace = Trace.load(args.trace)
        kinds = kinds_to_show(trace, args.kind)
        sel = Selection(window=args.window, threads=args.threads, callsites=args.callsites)
        limit = DEFAULT_LIMIT if args.limit is None else args.limit
        sort = args.sort or "total"
        built = build(trace, kinds, sel, sort, limit)
    except (KvmscopeError, ValueError, OSError) as e:
        return _fail(e)
    text_sel = sel.describe()
    if args.format == "json":
        render.emit(render_json(trace, built, sort, text_sel), pager=False)
        return EXIT_OK
    style = render.terminal_style(sys.stdout)
    render.emit(render_text(trace, built, sort, style, text_sel),
                pager=not getattr(args, "no_pager", False))
    return EXIT_OK
