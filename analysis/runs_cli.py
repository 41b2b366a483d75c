"""The many-runs commands of the kvmscope CLI: ``convert``, ``store add``,
``store list``, ``sql`` and ``history``.  Options are defined in
:mod:`kvmscope.cli`; each function here runs one command and returns its
exit status.  The work is done by :mod:`~kvmscope.analysis.convert`,
:mod:`~kvmscope.analysis.store`, :mod:`~kvmscope.analysis.sql` and
:mod:`~kvmscope.analysis.history`.
"""

import json
import os
import sys

from .. import cli as _cli
from . import render

EXIT_OK, EXIT_REGRESSION, EXIT_USAGE = 0, 1, 2


def _fail(command, e):
    print(f"kvmscope {command}: error: {_cli.error_line(e)}", file=sys.stderr)
    return EXIT_USAGE


def _errors():
    """What a bad trace, store, query or option raises: one line, status 2."""
    from ..errors import KvmscopeError
    return (KvmscopeError, OSError, ValueError)


def _emit(args, text):
    out = getattr(args, "output", None)
    if out and out != "-":
        with open(out, "w", encoding="utf-8") as f:
            f.write(text)
        return
    render.emit(text, pager=not getattr(args, "no_pager", False))


def _frame_text(df, fmt, style=None, limit=None):
    """A DataFrame as text (an aligned table), CSV or JSON records."""
    if limit:
        df = df.head(limit)
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt == "json":
        return json.dumps(json.loads(df.to_json(orient="records", date_format="iso")),
                          indent=1) + "\n"
    heads = [str(c) for c in df.columns]
    rows = [["" if _isnull(v) else _cell(v) for v in row]
            for row in df.itertuples(index=False, name=None)]
    right = {i for i, c in enumerate(df.columns)
             if df[c].dtype.kind in "iuf"}
    doc = render.Document()
    doc.table(heads, rows, right=right)
    doc.line(f"({len(df)} row{'s' if len(df) != 1 else ''})")
    return doc.render(**(style or {"width": None, "color": False}))


def _isnull(v):
    try:
        return v is None or v != v
    except (TypeError, ValueError):
        return False


def _cell(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, dict):
        return ",".join(f"{k}={x}" for k, x in sorted(v.items()))
    return str(v)


def _style(args):
    if getattr(args, "format", "text") != "text" or getattr(args, "output", None):
        return {"width": None, "color": False}
    return render.terminal_style(sys.stdout)


# --------------------------------------------------------------------------
# convert

def cmd_convert(args):
    """``kvmscope convert TRACE [OUT]``: the Parquet or Arrow IPC file
    layout; without OUT, a stream trace is converted to Parquet in place."""
    from . import convert as _convert
    from .load import read_dir
    try:
        layout = _convert.TARGETS[args.to]
        tables, meta, warnings, cut = read_dir(args.trace, convert=False)
        if args.out:
            rows = _convert.write_layout(
                args.out, tables, meta, layout, compression=args.compression,
                warnings=[w for w in warnings if not w.startswith("meta.json")], cut=cut,
                console=os.path.join(args.trace, "console.log"))
            where = args.out
        else:
            if layout != "parquet":
                return _fail("convert", "converting in place makes the Parquet layout: "
                                        "give OUT for --to arrow-file")
            if (meta.get("layout") or "arrows") != "arrows":
                return _fail("convert", f"{args.trace}: already in the {meta['layout']} layout")
            _convert.convert_in_place(
                args.trace, tables=tables, meta=meta, compression=args.compression,
                warnings=[w for w in warnings if not w.startswith("meta.json")], cut=cut)
            rows = {n: t.num_rows for n, t in tables.items()}
            where = args.trace
    except _errors() as e:
        return _fail("convert", e)
    size = sum(os.path.getsize(os.path.join(where, f)) for f in os.listdir(where)
               if f.endswith(_convert.LAYOUTS[layout]))
    records = sum(v for k, v in rows.items() if k not in ("threads", "losses"))
    if args.format == "json":
        print(json.dumps({"path": where, "layout": layout, "rows": rows, "bytes": size,
                          "bytes_per_record": size / records if records else None}, indent=1))
    else:
        print(f"{where}: {layout} layout, {records} records, {size:,} bytes"
              + (f" ({size / records:.1f} bytes per record)" if records else ""))
    return EXIT_OK


# --------------------------------------------------------------------------
# store

def cmd_store_add(args):
    """``kvmscope store add STORE TRACE...``: 0 added, 2 refused."""
    from .store import Store, parse_label
    try:
        labels = dict(parse_label(x) for x in (args.label or []))
        store = Store(args.store, create=True)
        traces = list(args.traces)
        if args.name and len(traces) != 1:
            return _fail("store add", "--name names a single run: give one TRACE")
        added = store.add(traces, labels=labels, name=args.name)
    except _errors() as e:
        return _fail("store add", e)
    if args.format == "json":
        print(json.dumps({"store": args.store, "added": added}, indent=1))
    else:
        for path, rid in zip(traces, added):
            print(f"{path}: added as run {rid}")
    return EXIT_OK


def cmd_store_list(args):
    """``kvmscope store list STORE``: the runs, oldest first."""
    from .store import Store
    try:
        store = Store(args.store)
        df = store.runs(labels=args.label, order=args.order)
    except _errors() as e:
        return _fail("store list", e)
    cols = ["position", "run", "name", "start_time", "guest", "vcpus", "iterations", "state",
            "records_written", "records_lost", "labels"]
    if args.format != "text":
        cols += ["time_source", "added_at", "hostname", "source", "config", "host"]
    _emit(args, _frame_text(df[cols], args.format, _style(args), args.limit))
    return EXIT_OK


# --------------------------------------------------------------------------
# sql

def cmd_sql(args):
    """``kvmscope sql TRACE_OR_STORE QUERY``: 0, or 2 with one line."""
    from .store import Store
    try:
        if Store.is_store(args.source):
            df = Store(args.source).sql(args.query)
        else:
            from .trace import Trace
            df = Trace.load(args.source).sql(args.query)
    except _errors() as e:
        return _fail("sql", e)
    _emit(args, _frame_text(df, args.format, _style(args), args.limit))
    return EXIT_OK


# --------------------------------------------------------------------------
# history

def cmd_history(args):
    """``kvmscope history STORE``: 0 no regression starts in the newest
    runs, 1 one does, 2 error."""
    from .history import history
    from .store import Store, parse_label
    try:
        labels = dict(parse_label(x) for x in (args.label or []))
        result = history(Store(args.store), metric=args.metric, stat=args.stat,
                         callsite=args.callsite, lock=args.lock, labels=labels,
                         order=args.order, scheduler=args.scheduler, penalty=args.penalty,
                         min_size=args.min_size, threshold=args.threshold,
                         min_delta_ns=args.min_delta, recent=args.recent,
                         min_count=args.min_count)
        if args.plot:
            from . import plot
            plot._check_format(args.plot)
            plot.save(result.plot(), args.plot)
    except _errors() as e:
        return _fail("history", e)
    if args.format == "json":
        _emit(args, json.dumps(result.to_dict(), indent=1, default=str) + "\n")
        return result.exit_status
    cps = result.change_points
    if args.format == "csv":
        _emit(args, cps.to_csv(index=False))
        return result.exit_status
    o = result.options
    doc = render.Document()
    doc.line(f"kvmscope history: {o['metric']} time, {o['stat']}, per lock and call site, "
             f"{len(result.runs)} runs in {'time' if o['order'] == 'time' else o['order']} "
             "order", style="bold")
    doc.line(f"change points: ruptures PELT (l2 on log values / noise), penalty "
             f"{o['penalty']:g} x log(n), segments of >= {o['min_size']} runs; kept when the "
             f"segments' medians differ by >= {o['threshold']:.0%} and {o['min_delta_ns']} ns")
    doc.line()
    if len(cps):
        doc.table(["lock", "callsite", "run #", "run", "name", "before", "after", "change",
                   "recent"],
                  [[r.lock, r.callsite, str(r.position), r.run, str(r.name), _ns(r.before),
                    _ns(r.after), f"{r.change:+.1%}", "yes" if r.recent else ""]
                   for r in cps.itertuples()], right={2, 5, 6, 7})
    else:
        doc.line("no change point")
    for r in result.newest_regressed.itertuples():
        doc.line(f"{r.lock} {r.callsite}: newest run {_ns(r.value)} vs {_ns(r.baseline)} "
                 f"({r.change:+.1%}; interval [{r.low:+.1%}, {r.high:+.1%}] from {r.runs} runs)",
                 style="red")
    if args.plot:
        doc.line(f"plot: {args.plot}")
    doc.line(result.verdict(), style="bold red" if result.exit_status else "green")
    _emit(args, doc.render(**_style(args)))
    return result.exit_status


def _ns(v):
    from .. import units
    return units.format_duration(float(v))


#: The command functions :func:`kvmscope.cli.add_runs_commands` binds.
COMMANDS = {"cmd_convert": cmd_convert, "cmd_store_add": cmd_store_add,
            "cmd_store_list": cmd_store_list, "cmd_sql": cmd_sql, "cmd_history": cmd_history}
