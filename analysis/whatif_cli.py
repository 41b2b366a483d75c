"""``kvmscope replay`` and ``kvmscope whatif``: re-execute a recorded trace
under changed conditions.  Options are defined in :mod:`kvmscope.cli`; the
work is done by :mod:`~kvmscope.analysis.whatif`; this module lays the
results out as text, Markdown or JSON (docs/whatif.md).
"""

import json
import math
import sys
import warnings

from .. import cli as _cli
from .. import units
from ..errors import KvmscopeError
from . import render
from . import whatif as _whatif
from .load import TraceError
from .trace import Trace

EXIT_OK, EXIT_USAGE = 0, 2


def _fail(command, e):
    print(f"kvmscope {command}: error: {_cli.error_line(e)}", file=sys.stderr)
    return EXIT_USAGE


def _warned(command, fn, *a, **kw):
    """Call *fn*; each warning it gives (a trace re-executed only in part)
    becomes one line on stderr."""
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        out = fn(*a, **kw)
    for w in got:
        print(f"kvmscope {command}: warning: {w.message}", file=sys.stderr)
    return out


def _model_note(pred):
    """`` (sequence model)`` for a prediction without a causal model."""
    return " (sequence model)" if (pred.meta.get("replay") or {}).get("model") == "sequence" \
        else ""


def changes_of(args):
    """The what-if changes of parsed *args* as keyword arguments."""
    ch = {}
    if getattr(args, "scale_hold", None):
        ch["scale_hold"] = dict(args.scale_hold)
    if getattr(args, "add_hold", None):
        ch["add_hold"] = dict(args.add_hold)
    if getattr(args, "lockless", None):
        ch["lockless"] = list(args.lockless)
    for k in ("vcpus", "aio_threads", "timer_period_us"):
        if getattr(args, k, None) is not None:
            ch[k] = getattr(args, k)
    return ch


def _fmt(metric, v):
    """A figure as text (durations with units, rates, shares)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if metric.endswith("_ns"):
        return units.format_duration(v, sep="")
    if metric.endswith("_per_s"):
        return units.format_rate(v) + "/s"
    if metric.endswith("_pct"):
        return f"{v:.2f}%"
    return f"{v:,.0f}"


def _change(metric, d, pct):
    if d is None or (isinstance(d, float) and math.isnan(d)):
        return "-"
    if metric.endswith("_pct"):
        return f"{d:+.2f} pt"
    sign = "+" if d > 0 else ("-" if d < 0 else "")
    mag = _fmt(metric, abs(d))
    share = "" if pct is None or math.isnan(pct) else f" ({pct:+.1f}%)"
    return f"{sign}{mag}{share}"


def _json_value(v):
    if isinstance(v, float) and math.isnan(v):
        return None
    if hasattr(v, "item"):
        v = v.item()
    return v


def _table(args, heads, rows, right, style):
    if args.format == "markdown":
        return render.markdown_table(heads, rows, right)
    return render.text_table(heads, rows, right, **style)


def _style(args):
    if args.format != "text":
        return {"width": None, "color": False}
    return render.terminal_style(sys.stdout)


def _runs_rows(runs, ranged=False):
    rows = []
    for r in runs.itertuples():
        row = [_whatif.LABELS[r.metric], _fmt(r.metric, r.recorded), _fmt(r.metric, r.predicted)]
        if ranged:
            lo, hi = _fmt(r.metric, r.predicted_min), _fmt(r.metric, r.predicted_max)
            row.append(lo if lo == hi else f"{lo} .. {hi}")
        rows.append(row + [_change(r.metric, r.change, r.change_pct)])
    return rows


def _sites_rows(sites):
    rows = []
    for r in sites.itertuples():
        rows.append([r.callsite, f"{r.acquisitions_recorded:,.0f}",
                     f"{r.acquisitions_predicted:,.0f}",
                     units.format_duration(r.wait_ns_recorded, sep=""),
                     units.format_duration(r.wait_ns_predicted, sep=""),
                     _change("wait_ns", r.wait_change_ns, None),
                     units.format_duration(r.hold_mean_ns_recorded, sep=""),
                     units.format_duration(r.hold_mean_ns_predicted, sep="")])
    return rows


_SITE_HEADS = ["callsite", "acquired", "predicted", "wait", "predicted", "change",
               "hold mean", "predicted"]


def _what(pred):
    rp = pred.meta.get("replay") or {}
    return ", ".join(rp.get("describe") or ["no change"])


def cmd_replay(args):
    """Run ``kvmscope replay``: write the predicted trace; 0, or 2 with one
    line on stderr."""
    try:
        trace = Trace.load(args.trace)
        if getattr(args, "engine", "model") == "core":
            return _replay_core(args, trace)
        pred = _warned("replay", _whatif.reexecute, trace, policy=args.policy, seed=args.seed,
                       cpus=getattr(args, "cpus", None), **changes_of(args))
        _whatif.write(pred, args.output, force=args.force,
                      compression=None if args.compression == "none" else args.compression)
    except (TraceError, KvmscopeError, OSError, ValueError) as e:
        return _fail("replay", e)
    window = pred.meta["replay"].get("window")
    runs, _ = _whatif.compare(_recorded(trace, window), pred)
    records = pred.num_records
    if args.format == "json":
        out = {"path": args.output, "of": args.trace, "changes": pred.meta["replay"]["changes"],
               "policy": args.policy, "seed": args.seed, "records": records,
               "model": pred.meta["replay"].get("model"), "window": window,
               "figures": _figures(runs, "predicted")}
        render.emit(json.dumps(out, indent=1) + "\n", pager=False)
        return EXIT_OK
    fig = {r.metric: r for r in runs.itertuples()}
    show = _shower(fig)
    line = (f"{args.output}: predicted run of {args.trace} ({_what(pred)}){_model_note(pred)}, "
            f"{records:,} records\n"
            f"  exits/s {show('exits_per_s')}, BQL wait {show('bql_wait_ns')}, "
            f"contended {show('contended_pct')}")
    if fig["requests"].recorded or fig["requests"].predicted:
        line += (f", request latency p50 {show('request_p50_ns')}, "
                 f"p99 {show('request_p99_ns')}")
    off = _unchanged_off(pred)
    if off:
        line += "\n  " + off
    render.emit(line + "\n", pager=False)
    return EXIT_OK


#: A recorded vCPU that waited this share of the time it wanted a CPU (or
#: more) for one is named in the whatif title: the host was oversubscribed,
#: and predictions lean on the CPU-sharing estimate.
CPU_WAIT_NOTE_PCT = 10.0


def _cpu_waits(trace):
    """:func:`stats.vcpu_cpu_waits`, rounded for the output."""
    from .stats import vcpu_cpu_waits
    return {n: round(p, 1) for n, p in vcpu_cpu_waits(trace).items()}


def _unchanged_off(pred):
    """One line when the causal model gives the recording back within its
    tolerance but not exactly, else ''."""
    off = (pred.meta.get("replay") or {}).get("unchanged_off")
    return f"note: re-executed unchanged, this recording comes back close but not exact: {off}" if off else ""


def _recorded(trace, window):
    """The recording to compare a prediction with: the part re-executed."""
    if not window:
        return trace
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _whatif.covered(trace)[0]


def _figures(runs, name):
    """JSON figures: per metric, the recorded value and this run's (*name*)."""
    return {r.metric: {"recorded": _json_value(r.recorded), name: _json_value(r.predicted)}
            for r in runs.itertuples()}


def _shower(fig):
    """``show(metric)``: "value (recorded value)" for the text summary."""
    def show(m):
        r = fig[m]
        return f"{_fmt(m, r.predicted)} (recorded {_fmt(m, r.recorded)})"
    return show


def _replay_core(args, trace):
    """``replay --engine core``: the model's schedules run on real threads
    through the compiled core (the core is imported only here)."""
    if args.policy != "barging":
        raise KvmscopeError("--engine core runs the real lock (barging): "
                            "--policy fifo needs --engine model")
    if args.seed is not None:
        raise KvmscopeError("--engine core runs the recorded figures: --seed needs --engine model")
    if getattr(args, "cpus", None) is not None:
        raise KvmscopeError("--engine core runs on this host's CPUs: --cpus needs --engine model")
    from .. import core_replay
    meta = core_replay.replay(trace, args.output, force=args.force,
                              compression=None if args.compression == "none" else args.compression,
                              **changes_of(args))
    ran = Trace.load(args.output)
    runs, _ = _whatif.compare(trace, ran)
    records = ran.num_records
    if args.format == "json":
        out = {"path": args.output, "of": args.trace, "engine": "core",
               "changes": meta["replay"]["changes"], "records": records,
               "left_out": meta["replay"]["left_out"],
               "figures": _figures(runs, "replayed")}
        render.emit(json.dumps(out, indent=1) + "\n", pager=False)
        return EXIT_OK
    fig = {r.metric: r for r in runs.itertuples()}
    show = _shower(fig)
    what = ", ".join(meta["replay"]["describe"])
    line = (f"{args.output}: {args.trace} run through the core ({what}), {records:,} records\n"
            f"  ")
    if len(ran.exits):
        line += f"exits/s {show('exits_per_s')}, "
    line += (f"BQL wait {show('bql_wait_ns')}, contended {show('contended_pct')}, "
             f"acquisitions {show('acquisitions')}")
    if len(ran.aio) and "request_p50_ns" in fig:
        line += (f", request latency p50 {show('request_p50_ns')}, "
                 f"p99 {show('request_p99_ns')}")
    line += f", duration {show('duration_ns')}"
    render.emit(line + "\n", pager=False)
    return EXIT_OK


def cmd_whatif(args):
    """Run ``kvmscope whatif``: the predicted change as a table against the
    recording, or (``--rank``) what each call site's fix would buy."""
    try:
        trace = Trace.load(args.trace)
        seeds = getattr(args, "seeds", None)
        if seeds and args.seed is not None:
            raise KvmscopeError("give --seed N (one prediction) or --seeds N (several), not both")
        if args.rank:
            if changes_of(args):
                raise KvmscopeError("--rank tries its own changes: give no other what-if option")
            if seeds:
                raise KvmscopeError("--seeds: not with --rank (each fix is one re-execution)")
            return _rank(args, trace)
        ch = changes_of(args)
        if not ch:
            raise KvmscopeError("nothing to change: give --scale-hold, --add-hold, --lockless, "
                                "--vcpus, --aio-threads or --timer-period-us, or --rank")
        kw = dict(policy=args.policy, cpus=getattr(args, "cpus", None), **ch)
        pred = _warned("whatif", _whatif.reexecute, trace,
                       seed=0 if seeds else args.seed, **kw)
        window = pred.meta["replay"].get("window")
        recorded = _recorded(trace, window)
        if seeds:
            def more():
                yield pred
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")     # said once already
                    for k in range(1, seeds):
                        yield _whatif.reexecute(trace, seed=k, **kw)
            runs, sites = _whatif.compare_many(recorded, more())
        else:
            runs, sites = _whatif.compare(recorded, pred)
    except (TraceError, KvmscopeError, OSError, ValueError) as e:
        return _fail("whatif", e)
    if args.format == "json":
        out = {"trace": args.trace, "changes": pred.meta["replay"]["changes"],
               "policy": args.policy, "seed": args.seed, "seeds": seeds,
               "model": pred.meta["replay"].get("model"), "window": window,
               "cpu_stretch": pred.meta["replay"].get("cpu_stretch"),
               "sleep_wake": pred.meta["replay"].get("sleep_wake"),
               "unchanged_off": pred.meta["replay"].get("unchanged_off"),
               "recorded_cpu_wait_pct": _cpu_waits(trace),
               "figures": [{k: _json_value(v) for k, v in r.items()}
                           for r in runs.to_dict("records")],
               "callsites": [{k: _json_value(v) for k, v in r.items()}
                             for r in sites.to_dict("records")]}
        render.emit(json.dumps(out, indent=1) + "\n", pager=False)
        return EXIT_OK
    style = _style(args)
    title = f"What if {_what(pred)}: {args.trace} re-executed ({args.policy} lock)"
    if seeds:
        title += f", median of seeds 0 .. {seeds - 1}"
    if _model_note(pred):
        title += ", sequence model: no causal links between threads"
    stretch = pred.meta["replay"].get("cpu_stretch")
    if stretch and stretch != 1.0:
        cpus = getattr(args, "cpus", None) or (trace.meta.get("host") or {}).get("cpus")
        title += f", busy times x{stretch:.2f} for sharing {cpus} CPUs"
    waits = _cpu_waits(trace)
    if waits and max(waits.values()) >= CPU_WAIT_NOTE_PCT:
        title += (", the recorded vCPUs waited for a CPU "
                  + "/".join(f"{p:.0f}" for p in waits.values()) + "% of the time")
    sw = pred.meta["replay"].get("sleep_wake") or {}
    if sw.get("source") not in (None, "recording"):
        title += (f", sleeping waiters' wake-ups: {sw['source']}"
                  f" ({sw['n']}, median {sw['median_ns'] / 1000:.1f} us)")
    if window:
        title += f", its first {(window['end_ns'] - window['start_ns']) / 1e9:.4f} s"
    head = f"## {title}\n\n" if args.format == "markdown" else title + "\n"
    if seeds:
        text = head + _table(args, ["figure", "recorded", "predicted", "range", "change"],
                             _runs_rows(runs, ranged=True), {1, 2, 3, 4}, style)
    else:
        text = head + _table(args, ["figure", "recorded", "predicted", "change"],
                             _runs_rows(runs), {1, 2, 3}, style)
    text += ("\n### Per call site\n\n" if args.format == "markdown" else "\nPer call site\n")
    text += _table(args, _SITE_HEADS, _sites_rows(sites), set(range(1, 8)), style)
    off = _unchanged_off(pred)
    if off:
        text += "\n" + off + "\n"
    render.emit(text, pager=not getattr(args, "no_pager", False))
    return EXIT_OK


def _rank(args, trace):
    done = []

    def progress(k, n):
        done.append(k)
    table = _warned("whatif", _whatif.rank, trace, factor=args.factor, policy=args.policy,
                    seed=args.seed, progress=progress, cpus=getattr(args, "cpus", None))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        part, window = _whatif.covered(trace)
    sequence = _whatif.model_kind(part)[0] == "sequence"
    limit = args.limit if args.limit else len(table)
    table = table.head(limit) if limit else table
    if args.format == "json":
        out = {"trace": args.trace, "factor": args.factor, "policy": args.policy,
               "seed": args.seed,
               "baseline": {k: _json_value(v) for k, v in _whatif.metrics(part).items()},
               "fixes": [{k: _json_value(v) for k, v in r.items()}
                         for r in table.to_dict("records")]}
        render.emit(json.dumps(out, indent=1) + "\n", pager=False)
        return EXIT_OK
    style = _style(args)
    rows = []
    for i, r in enumerate(table.itertuples(), 1):
        rows.append([str(i), r.callsite, r.fix, _pct_text(r.exits_per_s_gain_pct),
                     _pct_text(r.requests_per_s_gain_pct),
                     units.format_duration(r.wait_removed_ns, sep=""),
                     _pct_text(r.wait_removed_pct, sign=False),
                     f"{r.contended_pct:.2f}%", f"{r.acquisitions:,}"])
    title = (f"What to fix first in {args.trace}: each call site's critical section x"
             f"{args.factor:g}, or its device without the BQL, re-executed")
    if sequence:
        title = (f"What to fix first in {args.trace}: each BQL call site's critical section x"
                 f"{args.factor:g}, re-executed (sequence model: no causal links between "
                 "threads)")
    if window:
        title += f", its first {(window['end_ns'] - window['start_ns']) / 1e9:.4f} s"
    head = f"## {title}\n\n" if args.format == "markdown" else title + "\n"
    text = head + _table(args, ["#", "callsite", "fix", "exits/s", "requests/s", "wait removed",
                                "of all wait", "contended", "acquired"],
                         rows, {0, 3, 4, 5, 6, 7, 8}, style)
    render.emit(text, pager=not getattr(args, "no_pager", False))
    return EXIT_OK


def _pct_text(v, sign=True):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:+.2f}%" if sign else f"{v:.1f}%"
