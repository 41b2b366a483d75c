"""The ``kvmscope report`` sections and their text, Markdown, JSON and CSV
renderings.

:func:`build` computes the sections as DataFrames of raw values (integer
nanoseconds); :func:`render` turns them into one of the output formats.
Only the rows shown are formatted, so rendering cost does not grow with the
trace.
"""

import io
import json
import math

import numpy as np
import pandas as pd

from .. import units
from ..errors import ConfigError
from .render import Document, duration_text, markdown_table
from .schema import clock_resolution_ns
from .select import SORT_KEYS, Selection, sort_frame  # noqa: F401 (Selection re-exported)

#: Section name -> (title, function of a Trace returning its DataFrame).
SECTIONS = {
    "caused": ("Waiting caused (critical sections ranked by the wait they made others do)",
               lambda t: t.caused()),
    "exits": ("Exits by reason (perf kvm stat)",
              lambda t: t.exit_stats("reason")),
    "addrs": ("Exits by reason and port/address",
              lambda t: t.exit_stats(["reason", "addr"])),
    "locks": ("Locks (lock_stat; wait over contended acquisitions)",
              lambda t: t.lock_stats("lock")),
    "callsites": ("Locks by call site",
                  lambda t: t.lock_stats(["lock", "callsite"])),
    "blockers": ("Who blocks whom (wait of waiter attributed to holder)",
                 lambda t: t.blockers()),
    "fairness": ("Fairness per thread (owner changes, re-acquired while others waited, "
                 "barged, longest starvation)", lambda t: t.fairness()),
    "pingpong": ("Ping-pong (hand-offs bouncing between two threads; zoom with --window)",
                 lambda t: t.pingpong()),
    "convoys": ("Convoys (the lock never free, a queue of waiters; zoom with --window)",
                lambda t: t.convoys()),
    "bh": ("Bottom halves (delay = schedule to run)", lambda t: t.bh_stats()),
    "timers": ("Timers (late = fire - expire)", lambda t: t.timer_stats()),
    "aio": ("AIO latency per stage", lambda t: t.aio_stats()),
    "loop": ("Main loop", lambda t: t.loop_stats()),
    "cpu": ("CPU per thread, whole run (runq = runnable, waiting for a CPU)", lambda t: t.cpu_stats()),
}

FORMATS = ("text", "markdown", "json", "csv")

#: What an empty section says, where "no records" would mislead.
EMPTY = {"cpu": "not in this trace: meta.json has no stats.cpu (recorded before kvmscope "
                "kept it, or imported)"}

# Columns shown in text and Markdown, which must fit a terminal; JSON and
# CSV carry every column.
_SHOWN = {
    "exits": ["reason", "samples", "samples_pct", "time_pct", "min_ns",
              "max_ns", "mean_ns", "stddev_ns", "p50_ns", "p99_ns"],
    "addrs": ["reason", "addr", "samples", "samples_pct", "time_pct",
              "min_ns", "max_ns", "mean_ns", "p50_ns", "p99_ns"],
    "locks": ["lock", "acquisitions", "contentions", "contention_pct",
              "handoffs", "held_pct", "wait_total_ns", "wait_mean_ns",
              "wait_p50_ns", "wait_p99_ns", "wait_max_ns", "hold_total_ns",
              "hold_mean_ns", "hold_p50_ns", "hold_p99_ns", "hold_max_ns"],
    "callsites": ["lock", "callsite", "acquisitions", "contentions",
                  "contention_pct", "handoffs", "wait_total_ns",
                  "wait_mean_ns", "wait_p99_ns", "wait_max_ns",
                  "hold_total_ns", "hold_mean_ns", "hold_p99_ns",
                  "hold_max_ns"],
    "blockers": ["lock", "waiter_name", "holder_name", "waits", "wait_ns"],
    "fairness": ["lock", "thread_name", "acquisitions", "contended", "owner_changes",
                 "reacquired_while_waited", "barged", "passed_over_max", "starved_max_ns",
                 "starved_at"],
    "pingpong": ["lock", "threads", "window", "duration_ns", "handoffs", "handoffs_per_ms",
                 "waited", "gap_mean_ns", "hold_mean_ns"],
    "convoys": ["lock", "window", "duration_ns", "acquisitions", "handoffs", "threads",
                "max_waiting", "wait_ns", "first_holder", "first_callsite"],
    "bh": ["name", "runs", "delay_mean_ns", "delay_p50_ns", "delay_p99_ns",
           "delay_max_ns", "dur_mean_ns", "dur_max_ns", "dur_total_ns"],
    "timers": ["name", "fires", "late_mean_ns", "late_p50_ns", "late_p99_ns",
               "late_max_ns", "dur_mean_ns", "dur_max_ns"],
    "aio": ["op", "stage", "requests", "min_ns", "mean_ns", "p50_ns",
            "p99_ns", "max_ns", "errors"],
    "loop": ["thread_name", "iterations", "wakeups_per_s", "timeouts",
             "poll_pct", "poll_mean_ns", "dispatch_pct", "dispatch_mean_ns",
             "dispatch_p99_ns", "dispatch_max_ns"],
    "cpu": ["thread_name", "cpu_ns", "runq_ns", "runq_pct", "slices", "delay_mean_ns", "voluntary",
            "involuntary"],
}

_HEADERS = {"samples_pct": "samples%", "time_pct": "time%",
            "contention_pct": "cont%", "held_pct": "held%",
            "poll_pct": "poll%", "dispatch_pct": "dispatch%",
            "waiter_name": "waiter", "holder_name": "holder",
            "thread_name": "thread", "wakeups_per_s": "wakeups/s",
            "reacquired_while_waited": "reacq_waited", "passed_over_max": "passed_over",
            "starved_max_ns": "starved", "handoffs_per_ms": "handoffs/ms",
            "first_holder": "began_by", "first_callsite": "callsite",
            "acquisitions": "acquired", "contentions": "contended",
            "runq_pct": "runq%", "voluntary": "sleeps", "involuntary": "preempted"}


#: Sections that are not in a report unless asked for (by name or ``all``):
#: drill-downs whose cost on a large trace is that of the rest together.
ON_REQUEST = ("fairness", "pingpong", "convoys")


def sections(names=None):
    """Validate and expand section names (``None``: every section but
    :data:`ON_REQUEST`; ``"all"``: all)."""
    if names is None:
        return [n for n in SECTIONS if n not in ON_REQUEST]
    if names == "all" or "all" in names:
        return list(SECTIONS)
    names = [names] if isinstance(names, str) else list(names)
    bad = [n for n in names if n not in SECTIONS]
    if bad:
        raise ConfigError(f"unknown section {bad[0]!r}; one of "
                         f"{', '.join(SECTIONS)}, all")
    return names


def _by_thread(threads):
    """A section computed on the rows the selected threads emitted."""
    def section(t, stat, threads=None, sites=None):
        return stat(t.select(threads=threads))
    return section


def _caused(t, threads=None, sites=None):
    df = t.caused(threads=threads)
    if sites is not None:
        df = df[df["holder_callsite"].isin(sites)].reset_index(drop=True)
    return df


def _blockers(t, threads=None, sites=None):
    df = t.blockers(callsites=sites)
    if threads is not None:
        df = df[df["waiter_name"].astype(str).isin(threads)].reset_index(drop=True)
    return df


def _rows_of(df, col, threads):
    if threads is None:
        return df
    return df[df[col].astype(str).isin(threads)].reset_index(drop=True)


def _rows_with(df, threads):
    """Rows whose ``threads`` (comma-separated names) include a selected one."""
    if threads is None or df.empty:
        return df
    want = set(threads)
    keep = [bool(want & set(names.split(","))) for names in df["threads"]]
    return df[keep].reset_index(drop=True)


def _lock_section(by):
    def section(t, threads=None, sites=None):
        return t.select(threads=threads, callsites=sites).lock_stats(by)
    return section


#: How the thread and call-site filters apply to each section: the blame
#: sections see every holder and keep the selected threads' waits (and, for
#: ``caused``, the selected holder call sites; for ``blockers``, the waits
#: at the selected call sites); fairness keeps the selected
#: threads' rows, ping-pong and convoys the ones they took part in; the lock tables count the
#: acquisitions the selected threads made at the selected call sites; the
#: others count the rows the selected threads emitted.
_FILTERED = {
    "caused": _caused,
    "exits": lambda t, threads=None, sites=None: t.select(threads=threads).exit_stats("reason"),
    "addrs": lambda t, threads=None, sites=None: t.select(threads=threads).exit_stats(["reason", "addr"]),
    "locks": _lock_section("lock"),
    "callsites": _lock_section(["lock", "callsite"]),
    "blockers": _blockers,
    "fairness": lambda t, threads=None, sites=None: _rows_of(t.fairness(), "thread_name", threads),
    "pingpong": lambda t, threads=None, sites=None: _rows_with(t.pingpong(), threads),
    "convoys": lambda t, threads=None, sites=None: _rows_with(t.convoys(), threads),
    "bh": lambda t, threads=None, sites=None: t.select(threads=threads).bh_stats(),
    "timers": lambda t, threads=None, sites=None: t.select(threads=threads).timer_stats(),
    "aio": lambda t, threads=None, sites=None: t.select(threads=threads).aio_stats(),
    "loop": lambda t, threads=None, sites=None: t.select(threads=threads).loop_stats(),
    "cpu": lambda t, threads=None, sites=None: _rows_of(t.cpu_stats(), "thread_name", threads),
}


def build(trace, names=None, selection=None):
    """Compute report sections.

    Parameters
    ----------
    trace : Trace
    names : str or list of str, optional
        Sections (see :data:`SECTIONS`); default all but :data:`ON_REQUEST`
        (``"all"``: every one).
    selection : kvmscope.analysis.select.Selection, optional
        Filters: the window cuts the trace first (rows overlapping it); the
        threads and call sites then apply per section: ``caused`` and
        ``blockers`` keep the selected threads' waits (behind any holder),
        ``caused`` the selected holder call sites, ``blockers`` the waits
        at the selected call sites; ``locks`` and
        ``callsites`` count the selected threads' acquisitions at the
        selected call sites; the other sections the rows the selected
        threads emitted (call sites do not apply to them).  The sort key
        orders every section that has its column.

    Returns
    -------
    dict of str to DataFrame
        Raw values: durations in integer ns, shares in percent.

    Examples
    --------
    >>> from kvmscope.analysis import report
    >>> rep = report.build(trace, ["locks", "blockers"])   # doctest: +SKIP
    >>> print(report.render(trace, rep, "markdown"))       # doctest: +SKIP
    >>> sel = Selection(window="10ms:20ms", callsites="pio:*", sort="caused")
    >>> rep = report.build(trace, "caused", sel)           # doctest: +SKIP
    """
    names = sections(names)
    if selection is None or (not selection.active and selection.sort is None):
        return {n: SECTIONS[n][1](trace) for n in names}
    t = selection.windowed(trace)
    threads = selection.thread_names(t)
    sites = selection.callsite_names(t)
    if selection.sort is not None:
        column = SORT_KEYS[selection.sort]
        if not any(column in SECTION_COLUMNS.get(n, ()) for n in names):
            raise ConfigError(f"sort key {selection.sort!r} orders none of the sections shown; "
                              "it orders " + ", ".join(
                                  n for n, cols in SECTION_COLUMNS.items() if column in cols))
    out = {}
    for n in names:
        df = _FILTERED[n](t, threads=threads, sites=sites)
        out[n] = sort_frame(df, selection.sort)
    return out


#: Columns of the sections a sort key can order (checked by the tests
#: against what the sections return).
SECTION_COLUMNS = {
    "caused": ("caused_ns", "acquisitions", "hold_mean_ns", "hold_total_ns"),
    "locks": ("acquisitions", "contentions", "handoffs", "wait_total_ns", "wait_min_ns",
              "wait_mean_ns", "wait_max_ns", "hold_total_ns", "hold_min_ns", "hold_mean_ns",
              "hold_max_ns"),
}
SECTION_COLUMNS["callsites"] = SECTION_COLUMNS["locks"]
SECTION_COLUMNS.update(fairness=("acquisitions", "wait_total_ns"), pingpong=("handoffs", "hold_mean_ns"),
                       convoys=("acquisitions", "handoffs"))


def summary(trace):
    """One dict describing the trace for report headers and JSON:
    ``complete`` is false when records are missing (see
    :func:`replay.coverage`), and ``coverage`` then says how, in lines."""
    from .replay import describe_coverage, is_complete
    cfg = trace.meta.get("config") or {}
    complete = is_complete(trace)
    return {
        "path": trace.path,
        "state": trace.meta.get("state"),
        "guest": cfg.get("guest") if isinstance(cfg, dict) else None,
        "start_ns": trace.start_ns,
        "end_ns": trace.end_ns,
        "duration_ns": trace.duration_ns,
        "records": {n: trace.arrow(n).num_rows for n in
                    ("exits", "locks", "bh", "timers", "aio", "loop", "irqs")},
        "warnings": list(trace.warnings),
        "resolution_ns": clock_resolution_ns(trace.meta),
        "complete": complete,
        "coverage": [] if complete else describe_coverage(trace),
    }


# --------------------------------------------------------------------------
# cell formatting (applied to the shown rows only)

def _cell(col, v, res=1):
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if col.endswith("_ns"):
        return duration_text(v, res)        # at the trace's clock resolution
    if col.endswith("_pct"):
        return f"{v:.1f}%"
    if col == "addr":
        return f"{int(v):#x}"
    if isinstance(v, (float, np.floating)):
        return f"{v:.1f}"
    return str(v)


def _header(col):
    if col in _HEADERS:
        return _HEADERS[col]
    return col[:-3] if col.endswith("_ns") else col


def _is_numeric(df, col):
    return pd.api.types.is_numeric_dtype(df[col]) and col != "thread"


def _shown(name, df, top, all_columns):
    if top:
        df = df.head(top)
    if not all_columns:
        df = df[[c for c in _SHOWN.get(name, df.columns) if c in df.columns]]
    return df


def _cells(df, res=1):
    return [[_cell(c, v, res) for v in df[c].tolist()] for c in df.columns]


# --------------------------------------------------------------------------
# renderers

# To fit a terminal, number columns are left out in this order of their
# suffix (spread and percentiles before means and totals), then the other
# numbers from the right; names and the first number stay.
_DROP_FIRST = ("stddev_ns", "min_ns", "p50_ns", "p99_ns", "max_ns", "mean_ns")


def _table(df, res=1):
    """Headers, formatted rows, right-aligned columns and the columns that
    may be left out to fit a terminal of a shown section (durations rounded
    to the clock resolution *res*)."""
    heads = [_header(c) for c in df.columns]
    rows = [list(r) for r in zip(*_cells(df, res))]
    numeric = [i for i, c in enumerate(df.columns) if _is_numeric(df, c)]
    cols = list(df.columns)
    drop = [i for suffix in _DROP_FIRST for i in reversed(numeric[1:])
            if cols[i].endswith(suffix)]
    drop += [i for i in reversed(numeric[1:]) if i not in drop]
    return heads, rows, set(numeric), drop


def _more(df, top):
    return f"  ... {len(df) - top} more rows (--limit 0 shows all)"


def _head_lines(info):
    rec = ", ".join(f"{v} {k}" for k, v in info["records"].items() if v)
    return [f"trace {info['path'] or '(in memory)'}: state "
            f"{info['state']}, guest {info['guest']}, "
            f"{units.format_duration(info['duration_ns'], sep='')}",
            f"records: {rec or 'none'}"] + \
        ([f"timestamps: {duration_text(info['resolution_ns'], info['resolution_ns'])} resolution "
          "(durations are rounded to it)"] if info.get("resolution_ns", 1) > 1 else []) + \
        ([f"selection: {info['selection']}"] if info.get("selection") else []) + \
        [f"warning: {w}" for w in info["warnings"]] + \
        [f"incomplete: {c}" for c in info["coverage"]]


def render(trace, built=None, fmt="text", top=None, all_columns=False,
           width=None, color=False, selection=None):
    """Render sections from :func:`build`.

    Parameters
    ----------
    trace : Trace
    built : dict of str to DataFrame, optional
        Sections from :func:`build`; default: all of them.
    fmt : {"text", "markdown", "json", "csv"}
        ``text``: aligned tables, durations with units in each cell.
        ``markdown``: the same as Markdown tables.  ``json``: one object,
        ``"trace"`` (a summary) plus one key per section holding a list of
        records with raw values (ns integers).  ``csv``: one table per
        section, each preceded by a ``# <section>`` line and followed by a
        blank line; with a single section, the table alone.
    top : int, optional
        At most this many rows per section (``None`` or 0: all).
    all_columns : bool
        Text and Markdown show a selection of columns unless this is set.
    width : int, optional
        ``text`` for a terminal this wide: tables leave out their rightmost
        number columns while they do not fit (a line says which).  Default:
        plain text, every table at its natural width.
    color : bool
        ``text`` with ANSI colours (bold titles and headers, warnings in
        yellow), for a terminal.
    selection : kvmscope.analysis.select.Selection, optional
        The filters *built* was computed with, said in the header (and as
        ``"selection"`` in JSON).

    Returns
    -------
    str
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    if top is not None and not (isinstance(top, (int, np.integer)) and top >= 0):
        raise ConfigError(f"top must be an integer >= 0 (0 or None: all rows), "
                          f"not {top!r}")
    if built is None:
        built = build(trace)
    info = summary(trace)
    res = clock_resolution_ns(trace.meta)
    chosen = selection.describe() if selection is not None else ""
    if chosen:
        info = dict(info, selection=chosen)
    if fmt == "json":
        out = {"trace": info}
        for name, df in built.items():
            df = df.head(top) if top else df
            out[name] = json.loads(df.to_json(orient="records"))
        return json.dumps(out, indent=1) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        for name, df in built.items():
            df = df.head(top) if top else df
            if len(built) > 1:
                buf.write(f"# {name}\n")
            df.to_csv(buf, index=False, lineterminator="\n")
            if len(built) > 1:
                buf.write("\n")
        return buf.getvalue()
    if fmt == "text":
        doc = Document()
        for line in _head_lines(info):
            doc.line(line, style="yellow" if line.startswith(
                ("warning:", "incomplete:")) else None)
        for name, df in built.items():
            doc.line().line(SECTIONS[name][0], style="bold")
            shown = _shown(name, df, top, all_columns)
            if shown.empty:
                doc.line(f"  ({EMPTY.get(name, 'no records')})")
            else:
                heads, rows, right, drop = _table(shown, res)
                doc.table(heads, rows, right, drop=drop)
            if top and len(df) > top:
                doc.line(_more(df, top))
        return doc.render(width=width, color=color)
    lines = _head_lines(info)
    parts = [f"# kvmscope report\n\n{lines[0]}  \n" + "  \n".join(lines[1:])
             + "\n"]
    for name, df in built.items():
        parts.append(f"\n## {SECTIONS[name][0]}\n\n")
        shown = _shown(name, df, top, all_columns)
        heads, rows, right, _ = _table(shown, res)
        parts.append(markdown_table(heads, rows, right) if rows
                     else f"_{EMPTY.get(name, 'no records')}_\n")
        if top and len(df) > top:
            parts.append(f"\n_{len(df) - top} more rows not shown_\n")
    return "".join(parts)
