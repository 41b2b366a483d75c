"""Plots of a kvmscope trace with matplotlib: per-thread timeline with lock
ownership and hand-offs, lock wait and hold distributions, contention over
time, exit rate, AIO / bottom-half / timer latency; and ``kvmscope plot``.

Every ``plot_*`` function takes a :class:`~kvmscope.analysis.Trace` and
returns a :class:`matplotlib.figure.Figure`.  Figures are built without
pyplot (no global state, no GUI, nothing shown): save them with
:func:`save` or ``fig.savefig``, or let Jupyter display them.  Pass
``ax=`` to draw into an existing Axes instead.  Durations are labelled
with their unit; colours are the same in every plot (:data:`STATE_COLORS`,
:func:`thread_colors`).

Examples
--------
>>> from kvmscope.analysis import Trace
>>> from kvmscope.analysis import plot
>>> t = Trace.load("traces/pio-storm")                   # doctest: +SKIP
>>> plot.save(plot.plot_timeline(t), "timeline.png")     # doctest: +SKIP
"""

import os

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from .. import units
from ..errors import ConfigError
from . import paths as _paths
from .progress import Progress
from .replay import STATES
from .stats import group_codes

# matplotlib is imported inside the functions that draw: the kvmscope CLI
# imports this module for every command, and matplotlib costs ~0.5 s.

#: Colour of each thread state (:func:`Trace.thread_states`), in every plot.
STATE_COLORS = {
    "idle": "#eeeeee",
    "in_guest": "#a6d96a",
    "poll": "#d9d9d9",
    "dispatch": "#c2a5cf",
    "exit": "#74add1",
    "io": "#35978f",
    "hold_lock": "#fdae61",
    "timer": "#e7298a",
    "bh": "#762a83",
    "wait_lock": "#d73027",
}

#: Legend text of each state.
STATE_LABELS = {
    "idle": "idle", "in_guest": "in guest (KVM_RUN)", "poll": "poll",
    "dispatch": "dispatch", "exit": "handling exit", "io": "AIO I/O",
    "hold_lock": "holding lock", "timer": "timer callback",
    "bh": "bottom half", "wait_lock": "waiting for lock",
}

#: Colours of threads (their names on the timeline, the lock owner row):
#: navy, brown, slate, olive.  Dark, unlike the state colours of nearby
#: hues, and none black, the colour of hand-off arrows, so that no colour
#: means both a state and an owner (tests/analysis/test_plot.py measures
#: how far apart they look).
THREAD_PALETTE = ("#08306b", "#8c510a", "#5a6b7b", "#6b6b00")

#: Kinds of ``kvmscope plot --kind``.
KINDS = ("timeline", "wait", "hold", "contention", "exits", "aio", "bh",
         "timers", "path")

# Units of axes and tick labels (durations in text: kvmscope.units).
_UNITS = (("s", 1e9), ("ms", 1e6), ("µs", 1e3), ("ns", 1.0))
_ROLE_ORDER = {"main": 0, "vcpu": 1, "aio": 2}


# --------------------------------------------------------------------------
# small helpers

def _duration(ns):
    """A duration as text with three significant digits, in µs rather than
    us: ``850 ns``, ``12.3 µs``, ``4.56 ms``."""
    return units.format_duration(ns, micro="µs")


def _time_unit(span_ns):
    """(unit, scale) giving readable numbers for a time axis *span_ns* long."""
    for unit, scale in _UNITS:
        if span_ns >= 20 * scale or unit == "ns":
            return unit, scale
    return "ns", 1.0        # pragma: no cover


def thread_colors(trace):
    """Colour of each thread id from :data:`THREAD_PALETTE`: the main loop
    first, then vCPUs, AIO workers and the rest, each in the order of the
    ``threads`` table; the palette repeats after four threads.

    Returns
    -------
    dict of int to str

    Examples
    --------
    >>> thread_colors(t)[0]                    # doctest: +SKIP
    '#08306b'
    """
    th = trace.threads
    ranked = sorted((_ROLE_ORDER.get(r, 3), i, int(t)) for i, (t, r) in
                    enumerate(zip(th["thread"], th["role"].astype(str))))
    return {t: THREAD_PALETTE[k % len(THREAD_PALETTE)]
            for k, (_, _, t) in enumerate(ranked)}


def _trace_label(trace):
    where = os.path.basename(os.path.normpath(trace.path)) if trace.path \
        else "in-memory trace"
    config = trace.meta.get("config") or {}
    guest = config.get("guest")
    return f"{where} ({guest})" if guest and guest not in where else where


def _figure(ax, size):
    """(figure, axes): a new pyplot-free figure unless *ax* is given."""
    if ax is not None:
        return ax.figure, ax
    from matplotlib.figure import Figure
    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.add_subplot()


def _no_data(ax, what, title):
    """Say in the figure that there is nothing to draw, and why (see
    :func:`no_data`)."""
    ax.set_title(title)
    ax.text(0.5, 0.5, f"no data: {what}", transform=ax.transAxes,
            ha="center", va="center", fontsize=12, color="#555555",
            wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])
    ax._kvmscope_no_data = what
    return ax.figure


def no_data(fig):
    """Why *fig* has nothing to show, or None when it shows data.

    A plot whose data is empty (a trace without AIO requests, a window
    without events) still returns a figure, which says ``no data:`` and
    why; this tells a program so.  ``kvmscope plot`` prints the reason on
    stderr and exits with status 1.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        A figure returned by a ``plot_*`` function, or one whose Axes they
        drew into (``ax=``): the reason of the first such Axes that had
        nothing to draw.

    Returns
    -------
    str or None

    Examples
    --------
    >>> fig = plot_aio_latency(t)                             # doctest: +SKIP
    >>> no_data(fig)                                          # doctest: +SKIP
    'no AIO requests in this trace (the aio table is empty)'
    """
    for ax in fig.axes:
        why = getattr(ax, "_kvmscope_no_data", None)
        if why:
            return why
    return None


def _where(trace, window, table=None):
    """Where there was nothing: 'in this window', or 'in this trace'
    (saying so when *table* is empty)."""
    if window is not None:
        return "in this window"
    if table is not None and not trace.arrow(table).num_rows:
        return f"in this trace (the {table} table is empty)"
    return "in this trace"


def _tick_ns(v, _pos=None):
    """Tick label of a duration: '1 µs', '20 ns', '2.5 ms'."""
    for unit, scale in _UNITS:
        if v >= scale or unit == "ns":
            return f"{v / scale:.3g} {unit}"
    return f"{v:.3g} ns"        # pragma: no cover


def _duration_axis(ax, lo, hi):
    """Log-scaled x axis with tick labels in ns / µs / ms / s; ticks at
    1-2-5 steps when the data span less than three decades."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    ax.set_xscale("log")
    subs = (1.0, 2.0, 5.0) if hi < 1000 * max(lo, 1.0) else (1.0,)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.xaxis.set_major_formatter(FuncFormatter(_tick_ns))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _time_axis(ax, unit):
    """x axis of times since the trace start, written out in full (no
    "+2.736e5" offset, which hides where a zoomed window is)."""
    ax.set_xlabel(f"time since trace start ({unit})")
    ax.ticklabel_format(axis="x", style="plain", useOffset=False)


def _window(trace, window):
    """(lo, hi) ns: *window* or the whole trace."""
    lo, hi = (trace.start_ns, trace.end_ns) if window is None else window
    lo = trace.start_ns if lo is None else int(lo)
    hi = trace.end_ns if hi is None else int(hi)
    if hi <= lo:
        raise ConfigError(f"empty window: end {hi} <= start {lo}")
    return lo, hi


def _binned_overlap(start, end, edges):
    """Time covered by the intervals ``[start, end)`` in each bin of
    *edges* (intervals may overlap: coverage adds up).

    Cumulative coverage at each edge is sum(e - s for s < e) minus
    sum(e - f for f < e): two binary searches, no loop over intervals.
    """
    base = edges[0]
    e = (edges - base).astype(np.float64)
    s = np.sort((start - base).astype(np.float64))
    f = np.sort((end - base).astype(np.float64))
    cs = np.concatenate([[0.0], np.cumsum(s)])
    cf = np.concatenate([[0.0], np.cumsum(f)])
    ks = np.searchsorted(s, e)
    kf = np.searchsorted(f, e)
    covered = (ks * e - cs[ks]) - (kf * e - cf[kf])
    return np.maximum(np.diff(covered), 0.0)


def _groups(keys, nkeys):
    """(key, index array) per key present, via one stable sort."""
    order = np.argsort(keys, kind="stable")
    counts = np.bincount(keys, minlength=nkeys)
    ends = np.cumsum(counts)
    return [(k, order[ends[k] - counts[k]:ends[k]])
            for k in np.flatnonzero(counts)]


def _dominant(rows, start, end, codes, ncodes, edges):
    """Aggregate intervals to one per run of bins: in each bin of *edges*
    and row, the code that covers most time.  Uncovered time competes too
    (a lock free for most of a bin leaves the bin empty), so short
    intervals are not drawn bigger than they are.

    Returns ``(rows, start, end, codes)`` of the merged runs, empty bins
    left out.
    """
    nbins = len(edges) - 1
    nrows = int(rows.max()) + 1 if len(rows) else 0
    occ = np.zeros((nrows, ncodes + 1, nbins))
    key = rows.astype(np.int64) * ncodes + codes
    for k, idx in _groups(key, nrows * ncodes):     # per (row, code)
        occ[k // ncodes, k % ncodes] = _binned_overlap(start[idx], end[idx],
                                                       edges)
    occ[:, ncodes] = np.diff(edges) - occ[:, :ncodes].sum(axis=1)
    best = occ.argmax(axis=1)
    best[best == ncodes] = -1
    flat = best.ravel()                           # row-major: row, then bin
    r = np.repeat(np.arange(nrows), nbins)
    b = np.tile(np.arange(nbins), nrows)
    new = np.ones(len(flat), dtype=bool)
    new[1:] = (flat[1:] != flat[:-1]) | (r[1:] != r[:-1])
    first = np.flatnonzero(new)
    last = np.append(first[1:] - 1, len(flat) - 1)
    keep = flat[first] >= 0
    first, last = first[keep], last[keep]
    return r[first], edges[b[first]], edges[b[last] + 1], flat[first]


def _rects(ax, x0, x1, rows, colors, height=0.8, rasterize_over=5000,
           **kw):
    """Draw many rectangles as one PolyCollection (no per-record artist)."""
    from matplotlib.collections import PolyCollection
    y0 = rows - height / 2
    y1 = rows + height / 2
    verts = np.empty((len(x0), 4, 2))
    verts[:, 0, 0] = verts[:, 1, 0] = x0
    verts[:, 2, 0] = verts[:, 3, 0] = x1
    verts[:, 0, 1] = verts[:, 3, 1] = y0
    verts[:, 1, 1] = verts[:, 2, 1] = y1
    # snap=False: a 20 ns slice in a 1 ms window covers a twentieth of a
    # pixel and is drawn that faint, not widened to a whole pixel.
    coll = PolyCollection(verts, facecolors=colors, edgecolors="none",
                          linewidths=0, snap=False, **kw)
    # Thousands of tiny polygons make SVG/PDF files huge and slow to open.
    coll.set_rasterized(len(x0) > rasterize_over)
    ax.add_collection(coll)
    return coll


def _event_threads(trace):
    """Thread ids that emitted any record, ordered main, vCPUs, AIO, rest."""
    seen = set()
    for name in ("exits", "locks", "bh", "timers", "aio", "loop", "irqs"):
        col = trace.arrow(name).column("thread")
        if len(col):
            seen.update(pc.unique(col).to_pylist())
    th = trace.threads
    ids = th["thread"].to_numpy()
    roles = th["role"].astype(str).to_numpy()
    rank = [(_ROLE_ORDER.get(r, 3), int(i)) for i, r in zip(ids, roles)
            if int(i) in seen]
    return [i for _, i in sorted(rank)] + sorted(seen - set(ids.tolist()))


def _names(trace):
    return dict(zip(trace.threads["thread"].astype(int),
                    trace.threads["name"].astype(str)))


def _resolve_lock(trace, lock):
    """*lock* if the trace has it; for the default ``"bql"`` on a trace
    without it, the most acquired lock."""
    counts = trace.locks["lock"].value_counts()
    counts = counts[counts > 0]
    if lock is None or not len(counts):
        return lock
    if lock == "bql" and lock not in counts.index:
        return str(counts.idxmax())
    for name in [lock] if isinstance(lock, str) else lock:
        if name not in counts.index:
            raise ConfigError(f"no lock {name!r} in this trace; locks are "
                             f"{', '.join(map(str, counts.index))}")
    return lock


# --------------------------------------------------------------------------
# timeline

def busiest_window(trace, width_ns=1_000_000, lock=None):
    """The ``width_ns`` window with the most time spent waiting for a lock.

    Contended waits are scored by the time they cover in the window, so a
    few long waits outweigh many short ones: the window shows contention
    that is visible at its scale.  Only the last half window of each wait
    counts, so a stall longer than the window is shown where it ends, with
    the hand-offs that end it, not over its flat middle.  Of equally good
    windows the middle one is taken (a short burst is centred).  A trace
    without contention is scored by hand-offs, then lock acquisitions,
    then exits.

    Parameters
    ----------
    trace : Trace
    width_ns : int
        Window length (default 1 ms); the whole trace if it is shorter.
    lock : str or list of str, optional
        Only acquisitions (hand-offs) of these locks.

    Returns
    -------
    (int, int)
        ``(start_ns, end_ns)``.

    Examples
    --------
    >>> lo, hi = busiest_window(t, 1_000_000, lock="bql")   # doctest: +SKIP
    >>> t.window(lo, hi).lock_stats()                       # doctest: +SKIP
    """
    lo, hi = trace.start_ns, trace.end_ns
    width_ns = _at_least("width_ns", width_ns, 1)
    if hi - lo <= width_ns:
        return lo, max(hi, lo + 1)
    # Score bins of a twentieth of the window, then slide over twenty.
    step = max(width_ns // 20, (hi - lo) // 200_000, 1)
    edges = np.arange(lo, hi + step, step, dtype=np.int64)
    waits = trace.lock_waits(lock)
    if len(waits):
        end = waits["end_ns"].to_numpy()
        start = np.maximum(waits["start_ns"].to_numpy(), end - width_ns // 2)
        score = _binned_overlap(start, end, edges)
    else:
        ho = trace.handoffs(lock)
        if len(ho):
            ts = ho["acquired_ns"].to_numpy()
        elif len(trace.locks):
            ts = trace.locks["acquired_ns"].to_numpy()
        else:
            ts = trace.exits["exit_ns"].to_numpy()
        score = np.histogram(ts, edges)[0].astype(np.float64)
    k = max(1, min(int(round(width_ns / step)), len(score)))
    run = np.convolve(score, np.ones(k), mode="valid")
    if run.max() <= 0:
        return lo, lo + width_ns
    # Of the windows that score the most, the middle one: a burst shorter
    # than the window is centred in it rather than pushed to an edge.
    top = np.flatnonzero(run >= run.max() * (1 - 1e-9))
    gaps = np.flatnonzero(np.diff(top) != 1)
    last = top[gaps[0]] if len(gaps) else top[-1]
    start = int(edges[(int(top[0]) + int(last)) // 2])
    start = max(lo, min(start, hi - width_ns))
    return start, start + width_ns


def plot_timeline(trace, window=None, lock="bql", threads=None,
                  max_arrows=150, max_intervals=20_000, max_threads=48,
                  ax=None, figsize=None):
    """Per-thread timeline: what each thread did, who owned the lock, and
    the hand-offs between owners.

    One row per thread shows its states (:func:`Trace.thread_states`: in
    guest, handling an exit, waiting for the lock, holding it, polling,
    bottom half, timer, AIO I/O, idle) in :data:`STATE_COLORS`.  A row per
    lock above them shows its owner in the owner's thread colour
    (:func:`thread_colors`; the name of each thread that holds the lock
    in the window is written in that colour).  Arrows go from the release
    by one owner to the acquisition by the next (:func:`Trace.handoffs`).

    Parameters
    ----------
    trace : Trace
    window : (int, int), optional
        ``(start_ns, end_ns)`` to show.  Default: the 1 ms with the most
        contended acquisitions (:func:`busiest_window`).
    lock : str, list of str or None
        Locks whose ownership and hand-offs are drawn (default ``"bql"``,
        or the most acquired lock of a trace without one; None: all).
    threads : list of int or str, optional
        Rows to show (default: every thread that emitted a record).
    max_arrows : int
        At most this many hand-off arrows; hand-offs the next owner waited
        for come first, then the longest.  The title says when some are
        left out.
    max_intervals : int
        Above this many intervals in the window, each row shows the state
        covering most time per bin (about one bin per pixel column), and
        the title says so.
    max_threads : int
        Without *threads*, at most this many thread rows (main loop, vCPUs
        and AIO workers first); the title says how many were left out.
    ax : matplotlib.axes.Axes, optional
        Draw here instead of in a new figure.
    figsize : (float, float), optional
        Size of a new figure in inches (default scales with the rows).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = plot_timeline(t)                                # doctest: +SKIP
    >>> fig = plot_timeline(t, (t.start_ns, t.start_ns + 200_000),
    ...                     threads=["vcpu0", "vcpu1"])       # doctest: +SKIP
    >>> save(fig, "timeline.svg")                             # doctest: +SKIP
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    bar = Progress(5, "timeline")
    lock = _resolve_lock(trace, lock)
    auto = window is None
    if auto:
        bar.update(0, "finding the busiest window")
        window = busiest_window(trace, 1_000_000, lock)
    lo, hi = _window(trace, window)
    names = _names(trace)
    _at_least("max_threads", max_threads, 1)
    _at_least("max_arrows", max_arrows, 0)
    _at_least("max_intervals", max_intervals, 1)
    ids = (_event_threads(trace) if threads is None
           else [int(i) for i in trace.thread_ids(threads)])
    left_out = 0
    if threads is None and len(ids) > max_threads:
        left_out, ids = len(ids) - max_threads, ids[:max_threads]
    locks = ([lock] if isinstance(lock, str) else
             sorted(map(str, trace.locks["lock"].unique())) if lock is None
             else list(lock))
    # Ownership rows only for locks the trace has.
    have = set(map(str, trace.locks["lock"].unique()))
    locks = [lk for lk in locks if lk is not None and lk in have]
    nlockrows = len(locks)
    row_of = np.full(1 << 16, -1, dtype=np.int64)
    row_of[np.asarray(ids, dtype=np.int64) + (1 << 15)] = \
        np.arange(len(ids)) + nlockrows
    bar.update(1, "selecting the window")
    # With each thread's rows just outside the window, so that the states
    # that cross an edge (time in the guest between two exits, idle gaps)
    # are replayed, then clipped to the window.
    sub = trace.window(lo, hi, neighbours=True)
    t0 = trace.start_ns
    unit, scale = _time_unit(hi - lo)

    def x(ns):          # ns -> axis units, relative to the trace start
        return (np.asarray(ns, dtype=np.int64) - t0) / scale

    bar.update(1, "replaying thread states")
    st = sub.thread_states(ids if left_out else None)
    rows = row_of[st["thread"].to_numpy().astype(np.int64) + (1 << 15)]
    s = np.maximum(st["start_ns"].to_numpy(), lo)
    e = np.minimum(st["end_ns"].to_numpy(), hi)
    code = st["state"].cat.codes.to_numpy().astype(np.int64)
    keep = (rows >= 0) & (e > s)
    rows, s, e, code = rows[keep], s[keep], e[keep], code[keep]

    own = sub.lock_intervals(locks)
    o_row = own["lock"].astype(str).map(
        {lk: i for i, lk in enumerate(locks)}).to_numpy().astype(np.int64)
    o_s = np.maximum(own["acquired_ns"].to_numpy(), lo)
    o_e = np.minimum(own["released_ns"].to_numpy(), hi)
    o_th = own["thread"].to_numpy().astype(np.int64)
    keep = o_e > o_s
    o_row, o_s, o_e, o_th = o_row[keep], o_s[keep], o_e[keep], o_th[keep]

    nrows = nlockrows + len(ids)
    size = figsize or (12, 1.6 + 0.42 * max(nrows, 2))
    fig, ax = _figure(ax, size)
    what = ("busiest 1 ms of contention" if auto and hi - lo == 1_000_000
            else f"{_duration(hi - lo)} window")
    title = f"Thread timeline: {_trace_label(trace)}, {what}"
    if not len(s) and not len(o_s):
        bar.close()
        return _no_data(ax, "no thread events in this window" if len(ids)
                        else "no thread recorded an event", title)
    notes = [f"{left_out} more threads not shown"] if left_out else []
    aggregated = len(s) + len(o_s) > max_intervals
    if aggregated:
        bar.update(1, "aggregating")
        nbins = 1500
        edges = np.linspace(lo, hi, nbins + 1).astype(np.int64)
        rows, s, e, code = _dominant(rows, s, e, code, len(STATES), edges)
        if len(o_s):
            owners, o_code = np.unique(o_th, return_inverse=True)
            o_row, o_s, o_e, o_code = _dominant(o_row, o_s, o_e, o_code,
                                                len(owners), edges)
            o_th = owners[o_code]
        notes.append(f"aggregated: state covering most of each "
                     f"{_duration((hi - lo) / nbins)}")
    else:
        bar.update(1, "drawing")

    colors = np.array([STATE_COLORS[s_] for s_ in STATES], dtype=object)
    _rects(ax, x(s), x(e), rows, list(colors[code]))
    tcolor = thread_colors(trace)
    if len(o_s):
        owners, o_code = np.unique(o_th, return_inverse=True)
        palette = np.array([tcolor.get(int(t), "#7f7f7f") for t in owners],
                           dtype=object)
        _rects(ax, x(o_s), x(o_e), o_row, list(palette[o_code]))

    # Hand-off arrows: both ends in the window and on rows shown.
    narrows = 0
    if nlockrows:
        ho = sub.handoffs(locks)
        fr = row_of[ho["from_thread"].to_numpy().astype(np.int64) + (1 << 15)]
        to = row_of[ho["to_thread"].to_numpy().astype(np.int64) + (1 << 15)]
        rel = ho["released_ns"].to_numpy()
        acq = ho["acquired_ns"].to_numpy()
        ok = (fr >= 0) & (to >= 0) & (rel >= lo) & (acq < hi)
        idx = np.flatnonzero(ok)
        total = len(idx)
        if total > max_arrows:
            pri = np.lexsort((-ho["latency_ns"].to_numpy()[idx],
                              ~ho["waiting"].to_numpy()[idx]))
            idx = np.sort(idx[pri[:max_arrows]])
            notes.append(f"{max_arrows} of {total} hand-offs drawn "
                         "(waited-for first, then longest)")
        xs, xe = x(rel[idx]), x(acq[idx])
        props = dict(arrowstyle="-|>", color="black", lw=0.7, alpha=0.75,
                     shrinkA=0, shrinkB=0, mutation_scale=7)
        for a, b, r0, r1 in zip(xs, xe, fr[idx], to[idx]):  # <= max_arrows
            ax.annotate("", xy=(b, r1), xytext=(a, r0), arrowprops=props)
        narrows = len(idx)

    ax.set_xlim(x(lo), x(hi))
    ax.set_ylim(nrows - 0.5, -0.5)
    labels = [f"{lk} owner" for lk in locks] + \
        [names.get(i, f"thread {i}") for i in ids]
    ax.set_yticks(np.arange(nrows), labels)
    # The names of the threads that hold a drawn lock in the window, in
    # their owner colour: the palette is short, the others stay black.
    holders = set(np.unique(o_th).tolist())
    for i, tick in enumerate(ax.get_yticklabels()[nlockrows:]):
        if ids[i] in holders:
            tick.set_color(tcolor.get(ids[i], "black"))
    if nlockrows:
        ax.axhline(nlockrows - 0.5, color="#999999", lw=0.8)
    _time_axis(ax, unit)
    ax.grid(axis="x", color="#dddddd", lw=0.5)
    ax.set_axisbelow(True)
    ax.set_title(title + ("\n" + "; ".join(notes) if notes else ""),
                 fontsize=10)

    present = set(np.unique(code).tolist())
    # Most specific state first: waiting, holding, ...
    handles = [Patch(color=STATE_COLORS[s_], label=STATE_LABELS[s_])
               for i, s_ in reversed(list(enumerate(STATES)))
               if i in present]
    owners = sorted(set(np.unique(o_th).tolist())) if len(o_th) else []
    # Each owner in the legend while their colours differ.
    if len({tcolor.get(t) for t in owners}) == len(owners):
        handles += [Patch(color=tcolor.get(t, "black"),
                          label=f"{'/'.join(locks)} held by "
                                f"{names.get(t, t)}")
                    for t in owners]
    if narrows:
        handles.append(Line2D([], [], color="black", lw=0.8, marker=">",
                              markersize=4, label="hand-off (release → "
                                                  "next acquire)"))
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.005, 1),
                  fontsize=8, frameon=False, borderaxespad=0)
    bar.update(1, "done")
    bar.close()
    return fig


# --------------------------------------------------------------------------
# distributions

def _cdf(ax, groups, kind="cdf"):
    """Draw one CDF (or step histogram) per ``(label, values_ns)``; values
    below 1 ns are drawn at 1 ns on the log axis.  Returns True if any
    value was floored."""
    floored = False
    allv = np.maximum(np.concatenate([v for _, v in groups]), 1)
    lo, hi = float(allv.min()), max(float(allv.max()), 2.0)
    if kind == "hist":
        bins = np.geomspace(lo, hi * 1.0001, 60)
    for label, v in groups:
        v = np.sort(np.asarray(v, dtype=np.float64))
        n = len(v)
        floored |= bool((v < 1).any())
        v = np.maximum(v, 1.0)
        p50 = v[max(int(np.ceil(0.5 * n)) - 1, 0)]
        p99 = v[max(int(np.ceil(0.99 * n)) - 1, 0)]
        text = f"{label} (n={n:,}, p50 {_duration(p50)}, p99 {_duration(p99)})"
        if kind == "hist":
            ax.hist(v, bins=bins, histtype="step", lw=1.3, label=text)
            continue
        # A CDF of millions of points: ~4000 ranks look the same.
        idx = np.unique(np.linspace(0, n - 1, min(n, 4000)).astype(np.int64))
        xs = np.concatenate([[v[0]], v[idx]])
        ys = np.concatenate([[0.0], (idx + 1) / n])
        ax.step(xs, ys, where="post", lw=1.4, label=text)
    _duration_axis(ax, lo, hi)
    if kind == "hist":
        ax.set_ylabel("count")
    else:
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("fraction ≤ x")
    ax.grid(True, which="major", color="#dddddd", lw=0.5)
    ax.legend(fontsize=8, loc="best")
    return floored


def _top_groups(df, keys, values, max_groups):
    """[(label, values)] of the largest groups of *df* by *keys*; the rest
    merged into one "other" group."""
    max_groups = _at_least("max_groups", max_groups, 1)
    codes, labels = group_codes(df, keys)
    counts = np.bincount(codes, minlength=len(labels))
    order = np.argsort(-counts, kind="stable")
    out = []
    for g in order[:max_groups]:                    # a loop over groups
        label = " ".join(str(labels[k].iloc[g]) for k in labels.columns)
        out.append((label, values[codes == g]))
    rest = order[max_groups:]
    if len(rest):
        mask = np.isin(codes, rest)
        out.append((f"other ({len(rest)} groups)", values[mask]))
    return out


_BY = {"callsite": ["lock", "callsite"], "lock": ["lock"],
       "thread": ["lock", "thread_name"]}


def plot_distributions(trace, metric="wait", by="callsite", lock=None,
                       kind="cdf", window=None, max_groups=8, ax=None,
                       figsize=(9, 5)):
    """Distribution of lock wait or hold times per lock and call site.

    Parameters
    ----------
    trace : Trace
    metric : {"wait", "hold"}
        ``wait``: request to acquisition, over contended acquisitions only
        (as lock_stat counts waits); ``hold``: acquisition to release, all
        acquisitions.
    by : {"callsite", "lock", "thread"}
        One curve per lock and call site, per lock, or per lock and thread.
    lock : str or list of str, optional
        Only these locks.
    kind : {"cdf", "hist"}
        Cumulative distribution (default) or a step histogram with
        log-spaced bins.  The duration axis is log-scaled either way.
    window : (int, int), optional
        Only acquisitions overlapping ``(start_ns, end_ns)``.
    max_groups : int
        Curves drawn; smaller groups are merged into "other".
    ax, figsize
        As in :func:`plot_timeline`.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = plot_distributions(t, "hold", by="callsite", lock="bql")  # doctest: +SKIP
    """
    if metric not in ("wait", "hold"):
        raise ConfigError(f"metric must be 'wait' or 'hold', not {metric!r}")
    if by not in _BY:
        raise ConfigError(f"by must be one of {', '.join(_BY)}, not {by!r}")
    whole = trace
    if window is not None:
        trace = trace.window(*_window(trace, window))
    df = trace.locks
    if lock is not None:
        df = df[df["lock"].isin([lock] if isinstance(lock, str) else lock)]
    if metric == "wait":
        df = df[df["contended"].to_numpy()]
    fig, ax = _figure(ax, figsize)
    span = ("wait (request → acquired), contended acquisitions"
            if metric == "wait" else "hold (acquired → released)")
    title = (f"Lock {metric} time by {by.replace('callsite', 'call site')}: "
             f"{_trace_label(trace)}")
    if not len(df):
        what = ("no contended acquisitions" if metric == "wait"
                else "no lock acquisitions")
        if lock is not None:
            what += " of " + (lock if isinstance(lock, str) else ", ".join(lock))
        return _no_data(ax, f"{what} {_where(whole, window)}", title)
    groups = _top_groups(df, _BY[by], df[f"{metric}_ns"].to_numpy(),
                         max_groups)
    floored = _cdf(ax, groups, kind)
    ax.set_xlabel(f"{span} (log scale)"
                  + ("; values < 1 ns drawn at 1 ns" if floored else ""))
    ax.set_title(title, fontsize=10)
    return fig


def _stage_plot(ax, groups, title, xlabel, kind):
    floored = _cdf(ax, groups, kind)
    ax.set_xlabel(xlabel + " (log scale)"
                  + ("; values < 1 ns drawn at 1 ns" if floored else ""))
    ax.set_title(title, fontsize=10)
    return ax.figure


def plot_aio_latency(trace, op=None, kind="cdf", window=None, ax=None,
                     figsize=(9, 5)):
    """AIO request latency by stage: queue (submit → a worker picks it),
    io (the system call), completion (I/O done → completion ran in the
    main loop), and total.

    Parameters
    ----------
    trace : Trace
    op : str or list of str, optional
        Only these ops (``read``, ``write``, ``fsync``).
    kind : {"cdf", "hist"}
    window, ax, figsize
        As in :func:`plot_distributions`.

    Returns
    -------
    matplotlib.figure.Figure
        With a "no data" message when the trace has no AIO requests.

    Examples
    --------
    >>> fig = plot_aio_latency(t, op="read")                  # doctest: +SKIP
    """
    whole = trace
    if window is not None:
        trace = trace.window(*_window(trace, window))
    df = trace.aio
    if op is not None:
        df = df[df["op"].isin([op] if isinstance(op, str) else op)]
    fig, ax = _figure(ax, figsize)
    title = f"AIO latency by stage: {_trace_label(trace)}"
    if not len(df):
        what = "no " + ("" if op is None else (op if isinstance(op, str)
                                               else "/".join(op)) + " ")
        return _no_data(ax, f"{what}AIO requests {_where(whole, window, 'aio')}",
                        title)
    stages = (("queue", "queue (submit → start)"),
              ("io", "io (start → done)"),
              ("completion", "completion (done → complete)"),
              ("total", "total (submit → complete)"))
    groups = [(label, df[f"{s}_ns"].to_numpy()) for s, label in stages]
    ops = ", ".join(map(str, df["op"].unique()))
    return _stage_plot(ax, groups, f"{title}\n{len(df):,} requests ({ops})",
                       "latency", kind)


def _per_name_latency(trace, table, column, title, what, xlabel, kind, window,
                      max_groups, ax, figsize):
    """Distribution of one latency column per ``name`` of a bh/timers table."""
    whole = trace
    if window is not None:
        trace = trace.window(*_window(trace, window))
    df = getattr(trace, table)
    fig, ax = _figure(ax, figsize)
    title = f"{title}: {_trace_label(trace)}"
    if not len(df):
        return _no_data(ax, f"no {what} {_where(whole, window, table)}", title)
    groups = _top_groups(df, ["name"], df[column].to_numpy(), max_groups)
    return _stage_plot(ax, groups, title, xlabel, kind)


def plot_bh_latency(trace, kind="cdf", window=None, max_groups=8, ax=None,
                    figsize=(9, 5)):
    """Bottom halves: schedule-to-run latency (``run_ns - scheduled_ns``)
    per bottom-half name.

    Returns
    -------
    matplotlib.figure.Figure
        With a "no data" message when the trace has no bottom halves.

    Examples
    --------
    >>> fig = plot_bh_latency(t)                              # doctest: +SKIP
    """
    return _per_name_latency(
        trace, "bh", "delay_ns", "Bottom halves: schedule-to-run latency",
        "bottom halves",
        "delay from first schedule to run", kind, window, max_groups, ax, figsize)


def plot_timer_lateness(trace, kind="cdf", window=None, max_groups=8,
                        ax=None, figsize=(9, 5)):
    """Timers: lateness (``fire_ns - expire_ns``) per timer name.

    Returns
    -------
    matplotlib.figure.Figure
        With a "no data" message when the trace has no timer firings.

    Examples
    --------
    >>> fig = plot_timer_lateness(t)                          # doctest: +SKIP
    """
    return _per_name_latency(
        trace, "timers", "late_ns", "Timers: lateness (fire − deadline)",
        "timer firings",
        "lateness", kind, window, max_groups, ax, figsize)


# --------------------------------------------------------------------------
# request paths

#: Colour of each request-path stage (:mod:`~kvmscope.analysis.paths`):
#: the waits in reds and oranges, the rest in the colours of the thread
#: states they are spent in (:data:`STATE_COLORS`).
STAGE_COLORS = {
    "decode": STATE_COLORS["exit"], "vcpu_bql_wait": "#d73027",
    "dispatch": STATE_COLORS["hold_lock"], "queue": "#f46d43",
    "io": STATE_COLORS["io"], "wakeup": "#bdbdbd", "loop_bql_wait": "#a50026",
    "pending": STATE_COLORS["dispatch"], "callback": STATE_COLORS["bh"],
    "delivery": STATE_COLORS["in_guest"],
}


def plot_request_paths(trace, kind=None, window=None, top=20, figsize=None):
    """Request paths stage by stage: one stacked bar per request for the
    slowest ones, and each stage's distribution.

    Parameters
    ----------
    trace : Trace
    kind : {"block", "timer"}, optional
        Block requests (default when the trace has AIO requests) or timer
        ticks (:func:`paths.request_paths`).
    window : (int, int), optional
        Only the paths whose span overlaps ``(start_ns, end_ns)``.
    top : int
        Requests drawn as bars: the slowest whose every stage matched.
    figsize : (float, float), optional

    Returns
    -------
    matplotlib.figure.Figure
        Two panels: the stacked bars (the waiting stages in reds, each bar
        labelled with the request and what its longest wait was behind),
        and a box per stage (whiskers at the 1st and 99th percentiles, log
        scale).  With a "no data" message when there is no such request.

    Examples
    --------
    >>> fig = plot_request_paths(t, "block", top=10)          # doctest: +SKIP
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    if kind is None:
        kind = "block" if trace.arrow("aio").num_rows else "timer"
    if kind not in _paths.KINDS:
        raise ConfigError(f"unknown kind of request path {kind!r}; kinds are "
                          + ", ".join(_paths.KINDS))
    top = _at_least("top", top, 1)
    stages = _paths.STAGES[kind]
    what = "block requests" if kind == "block" else "timer ticks"
    title = f"Request paths ({what}): {_trace_label(trace)}"
    missing = _paths.missing_tables(trace, kind)
    p = _paths.request_paths(trace, kind) if not missing[:1] or \
        missing[0] != _paths.NEEDS[kind][0] else None
    if p is not None and window is not None:
        p = _paths.filter_paths(p, _window(trace, window))
    known = {s: ~p[f"{s}_ns"].isna().to_numpy() for s in stages} if p is not None else {}
    if p is None or not len(p) or not any(k.any() for k in known.values()):
        fig, ax = _figure(None, figsize or (11, 4))
        if p is None:
            why = f"no {what} in this trace (the {missing[0]} table is empty)"
        elif len(p):
            why = f"no stage of any of the {what} matched {_where(trace, window)}"
        else:
            why = f"no {what} {_where(trace, window)}"
        return _no_data(ax, why, title)
    matched = p["matched"].to_numpy()
    if matched.any():
        pool = p[matched]
        rank = pool["total_ns"].to_numpy(dtype=np.float64)
        note = f"the {{n}} slowest of {len(p):,} ({int(matched.sum()):,} with every stage matched)"
    else:
        # No request has every stage: draw what was matched, and say so.
        pool = p
        rank = sum(np.where(known[s], p[f"{s}_ns"].to_numpy(dtype=np.float64, na_value=0), 0)
                   for s in stages)
        note = (f"no request of {len(p):,} had every stage matched: bars show the "
                "matched stages only")
    slow = pool.iloc[np.argsort(-rank, kind="stable")[:top]]
    n = len(slow)
    fig = Figure(figsize=figsize or (11, 3.2 + 0.28 * n + 0.32 * len(stages)),
                 layout="constrained")
    ax, bx = fig.subplots(2, 1, height_ratios=[max(n, 3), len(stages) + 1])

    # Stacked bars, slowest on top.
    durs = {s: slow[f"{s}_ns"].to_numpy(dtype=np.float64, na_value=0) for s in stages}
    span = float(sum(durs.values()).max()) if n else 1.0
    unit, scale = _time_unit(max(span, 1.0))
    left = np.zeros(n)
    rows = np.arange(n)
    for stage in stages:                            # a loop over stages
        d = durs[stage] / scale
        ax.barh(rows, d, left=left, color=STAGE_COLORS[stage], height=0.75,
                edgecolor="none", label=stage)
        left += d
    labels = []
    for _, r in slow.iterrows():                    # at most `top` rows
        start = r["start_ns"]
        at = "" if pd.isna(start) else f" @{(int(start) - trace.start_ns) / 1e6:.1f} ms"
        labels.append(f"req {r['req']} {r['thread_name']} {r['op']}" if kind == "block"
                      else f"{r['name']}{at}")
    ax.set_yticks(rows, labels, fontsize=8)
    ax.set_ylim(n - 0.5, -0.5)
    # What each bar's longest wait was behind, after the bar.
    waits = _paths.WAITS[kind]
    for i, (_, r) in enumerate(slow.iterrows()):
        d = {w: (0 if pd.isna(r[f"{w}_ns"]) else r[f"{w}_ns"]) for w in waits}
        w = max(d, key=d.get)
        holder = r[f"{w}_holder"]
        if d[w] > 0 and not pd.isna(holder) and holder != _paths.NONE:
            ax.text(left[i], i, f"  {w.replace('_', ' ')} behind {holder} "
                    f"{r[f'{w}_holder_site']}", va="center", fontsize=7, color="#333333")
    ax.set_xlim(0, float(left.max()) * 1.45 if n and left.max() > 0 else 1)
    ax.set_xlabel(f"time from the {'OUT exit' if kind == 'block' else 'deadline'} ({unit})")
    ax.grid(axis="x", color="#dddddd", lw=0.5)
    ax.set_axisbelow(True)
    ax.legend(handles=[Patch(color=STAGE_COLORS[s], label=s) for s in stages],
              loc="upper left", bbox_to_anchor=(1.005, 1), fontsize=8, frameon=False,
              borderaxespad=0)
    ax.set_title(f"{title}\n{note.format(n=n)}", fontsize=10)

    # One box per stage, over the requests in which it matched: p1-p99
    # whiskers, median, quartiles; log scale.
    data = [np.maximum(p[f"{s}_ns"].to_numpy(dtype=np.float64, na_value=0)[known[s]], 1.0)
            if known[s].any() else np.array([np.nan]) for s in stages]
    # matplotlib 3.10 named it orientation; vert=False before that.
    import inspect
    horizontal = ({"orientation": "horizontal"} if "orientation" in
                  inspect.signature(bx.boxplot).parameters else {"vert": False})
    box = bx.boxplot(data, whis=(1, 99), showfliers=False, patch_artist=True,
                     widths=0.6, medianprops={"color": "black"}, **horizontal)
    for patch, stage in zip(box["boxes"], stages):
        patch.set_facecolor(STAGE_COLORS[stage])
    bx.set_yticks(np.arange(1, len(stages) + 1),
                  [s if known[s].any() else f"{s} (not matched)" for s in stages], fontsize=8)
    bx.set_ylim(len(stages) + 0.5, 0.5)
    allv = np.concatenate([d for d in data if not np.isnan(d).all()])
    _duration_axis(bx, float(allv.min()), float(allv.max()))
    floored = any((p[f"{s}_ns"].to_numpy(dtype=np.float64, na_value=1)[known[s]] < 1).any()
                  for s in stages)
    bx.set_xlabel("stage duration, over the requests in which it matched (log scale; "
                  "box: quartiles, whiskers: 1st and 99th percentiles"
                  + ("; 0 drawn at 1 ns" if floored else "") + ")", fontsize=8)
    bx.grid(axis="x", which="major", color="#dddddd", lw=0.5)
    return fig


# --------------------------------------------------------------------------
# over time

#: Time bins a plot may have.
BINS_RANGE = (1, 100_000)
#: Resolutions :func:`save` writes at.
DPI_RANGE = (10, 1200)


def _at_least(name, value, low, high=None):
    """*value* as an int, or ConfigError naming *name* and its range."""
    try:
        ok = int(value) == value and value >= low and (high is None or value <= high)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        rng = f"{low} .. {high}" if high is not None else f"at least {low}"
        raise ConfigError(f"{name} must be an integer, {rng}; not {value!r}")
    return int(value)


def _bins(lo, hi, bins):
    bins = _at_least("bins", bins, *BINS_RANGE)
    edges = np.linspace(lo, hi, bins + 1).astype(np.int64)
    return np.unique(edges)


def plot_contention(trace, by="thread", value="wait", lock=None, bins=200,
                    window=None, log=False, max_rows=40, ax=None,
                    figsize=None):
    """Contention over time as a heatmap: time bins x (threads, locks or
    call sites).

    Parameters
    ----------
    trace : Trace
    by : {"thread", "lock", "callsite"}
        Rows: the waiting thread, the lock, or the lock and call site.
    value : {"wait", "contended"}
        ``wait``: time spent waiting in each bin (waits that span bins are
        split between them); ``contended``: contended acquisitions per bin
        (counted at acquisition).
    lock : str or list of str, optional
        Only these locks.
    bins : int
        Time bins across the window.
    window : (int, int), optional
        ``(start_ns, end_ns)``; default the whole trace.
    log : bool
        Logarithmic colour scale.
    max_rows : int
        At most this many rows: the ones that waited most, the rest summed
        into one ``other`` row.
    ax, figsize
        As in :func:`plot_timeline`.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = plot_contention(t, by="callsite", value="contended")  # doctest: +SKIP
    """
    from matplotlib.colors import LogNorm
    keys = {"thread": ["thread_name"], "lock": ["lock"],
            "callsite": ["lock", "callsite"]}
    if by not in keys:
        raise ConfigError(f"by must be one of {', '.join(keys)}, not {by!r}")
    if value not in ("wait", "contended"):
        raise ConfigError(f"value must be 'wait' or 'contended', not {value!r}")
    lo, hi = _window(trace, window)
    waits = trace.lock_waits(lock)
    waits = waits[(waits["start_ns"].to_numpy() < hi)
                  & (waits["end_ns"].to_numpy() >= lo)]
    title = (f"Contention over time ({'wait time' if value == 'wait' else 'contended acquisitions'}"
             f" per {by.replace('callsite', 'call site')}): "
             f"{_trace_label(trace)}")
    _at_least("max_rows", max_rows, 2)
    codes, labels = group_codes(waits, keys[by]) if len(waits) else (None, [])
    names = [" ".join(str(labels[k].iloc[i]) for k in labels.columns)
             for i in range(len(labels))] if len(waits) else []
    if len(names) > max_rows:
        # The rows that waited most; the rest in one row.
        weight = np.bincount(codes, weights=waits["wait_ns"].to_numpy()
                             .astype(np.float64), minlength=len(names))
        top = np.argsort(-weight, kind="stable")[:max_rows - 1]
        remap = np.full(len(names), max_rows - 1)
        remap[top] = np.arange(len(top))
        names = [names[g] for g in top] + [f"other ({len(names) - len(top)})"]
        codes = remap[codes]
    nrows = len(names)
    size = figsize or (12, 2.2 + 0.35 * max(nrows, 2))
    fig, ax = _figure(ax, size)
    if not len(waits):
        return _no_data(ax, "no contended lock acquisitions in this "
                            "window", title)
    edges = _bins(lo, hi, bins)
    width = (hi - lo) / (len(edges) - 1)
    start = waits["start_ns"].to_numpy()
    end = waits["end_ns"].to_numpy()
    grid = np.zeros((nrows, len(edges) - 1))
    for g, idx in _groups(codes, nrows):            # a loop over rows
        if value == "wait":
            grid[g] = _binned_overlap(start[idx], end[idx], edges)
        else:
            grid[g] = np.histogram(end[idx], edges)[0]
    unit, scale = _time_unit(hi - lo)
    if value == "wait":
        wunit, wscale = next((u, sc) for u, sc in _UNITS
                             if grid.max() >= sc or u == "ns")
        grid = grid / wscale
        cbar_label = f"wait time per bin ({wunit})"
    else:
        cbar_label = "contended acquisitions per bin"
    t0 = trace.start_ns
    norm = LogNorm(vmin=max(grid[grid > 0].min(), 1e-9)) \
        if log and (grid > 0).any() else None
    img = ax.imshow(np.where(grid > 0, grid, np.nan) if log else grid,
                    aspect="auto", interpolation="nearest", cmap="YlOrRd",
                    norm=norm, origin="upper",
                    extent=((lo - t0) / scale, (hi - t0) / scale,
                            nrows - 0.5, -0.5))
    ax.set_yticks(np.arange(nrows), names)
    _time_axis(ax, unit)
    ax.set_title(f"{title}\nbins of {_duration(width)}", fontsize=10)
    fig.colorbar(img, ax=ax, label=cbar_label, pad=0.01)
    return fig


def plot_exit_rate(trace, by="reason", bins=200, window=None, max_lines=12,
                   ax=None, figsize=(12, 4.5)):
    """vCPU exits per second over time, one line per exit reason (or
    device, or vCPU thread).

    Parameters
    ----------
    trace : Trace
    by : {"reason", "device", "thread"}
    bins : int
        Time bins across the window.
    window : (int, int), optional
        ``(start_ns, end_ns)``; default the whole trace.
    max_lines : int
        At most this many lines: the groups with the most exits, the rest
        summed into one ``other`` line.
    ax, figsize
        As in :func:`plot_timeline`.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = plot_exit_rate(t, bins=100)                      # doctest: +SKIP
    """
    col = {"reason": "reason", "device": "device",
           "thread": "thread_name"}.get(by)
    if col is None:
        raise ConfigError(f"by must be reason, device or thread, not {by!r}")
    _at_least("max_lines", max_lines, 2)
    lo, hi = _window(trace, window)
    ex = trace.exits
    ts = ex["exit_ns"].to_numpy()
    inwin = (ts >= lo) & (ts < hi)
    fig, ax = _figure(ax, figsize)
    title = f"Exit rate by {by}: {_trace_label(trace)}"
    if not inwin.any():
        return _no_data(ax, "no vCPU exits in this window", title)
    edges = _bins(lo, hi, bins)
    width_s = (hi - lo) / (len(edges) - 1) / 1e9
    codes, labels = group_codes(ex[inwin], [col])
    ts = ts[inwin]
    unit, scale = _time_unit(hi - lo)
    t0 = trace.start_ns
    centers = ((edges[:-1] + edges[1:]) / 2 - t0) / scale
    counts = np.bincount(codes, minlength=len(labels))
    order = np.argsort(-counts, kind="stable")
    if len(order) > max_lines:
        rest = order[max_lines - 1:]
        order = order[:max_lines - 1]
    else:
        rest = order[:0]
    lines = [(labels[col].iloc[g] or "(none)", codes == g, counts[g])
             for g in order]
    if len(rest):
        lines.append((f"other ({len(rest)})", np.isin(codes, rest),
                      counts[rest].sum()))
    for name, sel, n in lines:                       # a loop over lines
        rate = np.histogram(ts[sel], edges)[0] / width_s
        ax.plot(centers, rate, lw=1.2, drawstyle="steps-mid",
                label=f"{name} ({n:,} exits)")
    ax.set_xlim((lo - t0) / scale, (hi - t0) / scale)
    ax.set_ylim(bottom=0)
    _time_axis(ax, unit)
    ax.set_ylabel("exits/s")
    ax.yaxis.set_major_formatter(_rate_formatter())
    ax.grid(True, color="#dddddd", lw=0.5)
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(f"{title}\nbins of {_duration((hi - lo) / (len(edges) - 1))}",
                 fontsize=10)
    return fig


def _rate_formatter():
    from matplotlib.ticker import FuncFormatter

    def f(v, _):
        for suffix, scale in (("M", 1e6), ("k", 1e3)):
            if abs(v) >= scale:
                return f"{v / scale:g}{suffix}"
        return f"{v:g}"
    return FuncFormatter(f)


# --------------------------------------------------------------------------
# output

#: File extensions :func:`save` writes, and the matplotlib format of each.
FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}


def save(fig, path, dpi=120):
    """Write *fig* as PNG, SVG or PDF, chosen by the extension of *path*.

    Raises
    ------
    ValueError
        Another extension, or *dpi* outside :data:`DPI_RANGE`.

    Examples
    --------
    >>> save(plot_exit_rate(t), "exits.pdf")                  # doctest: +SKIP
    """
    dpi = _at_least("dpi", dpi, *DPI_RANGE)
    fig.savefig(path, format=_check_format(path), dpi=dpi)
    return os.fspath(path)


def _check_format(path):
    """The matplotlib format for *path*'s extension, or ValueError."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in FORMATS:
        raise ConfigError(f"{path}: unsupported output format "
                         f"{ext or '(none)'!r}; use .png, .svg or .pdf")
    return FORMATS[ext]
