"""Export a kvmscope trace as Chrome trace-event JSON for ui.perfetto.dev and
chrome://tracing; the ``kvmscope export --perfetto`` command.

One process holds one track per thread.  Complete slices (``ph: "X"``) on
the thread tracks: vCPU exits, lock holds, main-loop poll and dispatch,
bottom halves, timers, AIO system calls.  Waits for a lock and the waiting
stages of AIO requests go to async tracks (``ph: "b"/"e"``), so they never
break the nesting of slices on a thread track.  Flow arrows (``ph: "s"/"f"``)
join each lock hand-off (the releasing owner's hold slice to the next
owner's) and each AIO request (submitter -> worker -> main loop); each
request path (:mod:`~kvmscope.analysis.paths`) is a chain of flow arrows
with one id, from the guest's exit through every thread it crossed to the
vCPU taking its interrupt.  Interrupt
events are instants (``ph: "i"``).

Events are built column-wise with numpy and pyarrow string kernels and
streamed to the file in chunks: no Python code runs per record.

Examples
--------
>>> from kvmscope.analysis import Trace
>>> from kvmscope.analysis.perfetto import export_perfetto
>>> export_perfetto(Trace.load("traces/demo"), "demo.json")   # doctest: +SKIP
{'path': 'demo.json', 'events': 24021, ...}
"""

import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ConfigError
from . import paths as _paths
from . import replay as _replay
from .progress import Progress
from .schema import SPANS

#: The process id every event carries (one VMM process per trace).
PID = 1

#: Nesting level of each kind of slice on a thread track; see
#: :func:`nest_slices`.  ``bql`` holds are level 1, other locks level 3.
LEVELS = {"exit": 0, "poll": 0, "dispatch": 0, "aio": 0, "bql": 1,
          "bh": 2, "timer": 2, "lock": 3}

#: Default ``--max-events`` of the command: about 300 MB of JSON, which the
#: Perfetto UI still loads in a browser tab.
DEFAULT_MAX_EVENTS = 2_000_000

_CHUNK = 1 << 18          # rows serialised at once (keeps strings < 2 GiB)
_TID_FALLBACK = 10_000_000  # above Linux's pid_max: no clash with OS tids
_ROLE_ORDER = {"main": 0, "vcpu": 1, "aio": 2}


# --------------------------------------------------------------------------
# column -> JSON text, vectorised

def _codes(col):
    """(int64 codes, distinct values) of a column; -1 codes are missing."""
    if isinstance(getattr(col, "dtype", None), pd.CategoricalDtype):
        cat = col.array if isinstance(col, pd.Series) else col
        return np.asarray(cat.codes, dtype=np.int64), list(cat.categories)
    codes, uniques = pd.factorize(np.asarray(col))
    return codes.astype(np.int64), list(uniques)


def _labels(fmt, *cols, quote=True):
    """JSON string literals of ``fmt(*values)`` for each row of *cols*
    (the text itself if not *quote*); each distinct combination of values
    is formatted once, not each row.

    Examples
    --------
    >>> _labels(lambda a, b: f"{a} {b}", ["bql", "bql"], ["io", "mmio"]
    ...         ).to_pylist()
    ['"bql io"', '"bql mmio"']
    """
    key = np.zeros(len(cols[0]), dtype=np.int64)
    sizes, uniques = [], []
    for col in cols:
        codes, values = _codes(col)
        key = key * (len(values) + 1) + (codes + 1)     # 0: missing
        sizes.append(len(values) + 1)
        uniques.append([None] + values)
    combos, inverse = np.unique(key, return_inverse=True)
    literals = []
    for combo in combos.tolist():                   # distinct values only
        parts = []
        for size, values in zip(reversed(sizes), reversed(uniques)):
            parts.append(values[combo % size])
            combo //= size
        text = str(fmt(*reversed(parts)))
        literals.append(json.dumps(text) if quote else text)
    return pc.take(pa.array(literals, pa.string()),
                   pa.array(inverse.astype(np.int64).ravel()))


def _str(col):
    """JSON string literals of a column's values."""
    return _labels(lambda v: "" if v is None else v, col)


def _int(values):
    return pc.cast(pa.array(np.asarray(values)), pa.string())


def _bool(values):
    return pc.take(pa.array(["false", "true"]),
                   pa.array(np.asarray(values).astype(np.int8)))


def _us(ns):
    """Integer ns (>= 0) -> microseconds with three decimals, exactly (no
    float rounding)."""
    ns = np.asarray(ns, dtype=np.int64)
    whole = _int(ns // 1000)
    frac = pc.utf8_lpad(_int(ns % 1000), 3, "0")
    return pc.binary_join_element_wise(whole, ".", frac, "")


def _join(*parts):
    """Concatenate string arrays and literal strings element-wise."""
    return pc.binary_join_element_wise(*parts, "")


def _write_array(f, arr):
    """Write the characters of a string array back to back, zero-copy."""
    if not len(arr):
        return 0
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)
    lo, hi = offsets[arr.offset], offsets[arr.offset + len(arr)]
    f.write(memoryview(arr.buffers()[2])[lo:hi])
    return len(arr)


# --------------------------------------------------------------------------
# slice nesting

def nest_slices(track, start, end, level):
    """Make slices on each track nest: return new ends (starts never move).

    Trace-event viewers need the slices of one thread to form a tree: two
    slices are disjoint, or one contains the other.  Recorded timestamps
    nest already when the recorder stamps in program order (an exit
    contains the lock hold taken while handling it).  Where they do not,
    the rule is: a slice of a deeper *level* (:data:`LEVELS`) ends no later
    than the shallower slice containing its start, and before any
    shallower slice starting inside it; among slices of one level, a slice
    ends no later than the next one starts.

    Parameters
    ----------
    track, start, end, level : int arrays of equal length

    Returns
    -------
    ndarray
        Ends, ``start <= result <= end`` (an end before its start becomes
        the start).

    Examples
    --------
    >>> import numpy as np
    >>> nest_slices(np.zeros(2), np.array([0, 5]), np.array([10, 20]),
    ...             np.array([0, 1])).tolist()
    [10, 10]
    """
    track = np.asarray(track)
    start = np.asarray(start, dtype=np.int64)
    end = np.maximum(np.asarray(end, dtype=np.int64), start)
    level = np.asarray(level)
    out = end.copy()
    order = np.lexsort((end, start, track))
    t_sorted = track[order]
    cuts = np.flatnonzero(np.diff(t_sorted)) + 1
    for idx in np.split(order, cuts):               # a loop over tracks
        levels = np.unique(level[idx])
        shallow = []                                # (starts, ends) fixed
        for lv in levels:                           # and over levels
            sel = idx[level[idx] == lv]             # sorted by start, end
            s, e = start[sel], out[sel].copy()
            # One level: end before the next slice of the level starts.
            if len(s) > 1:
                e[:-1] = np.minimum(e[:-1], s[1:])
            for ps, pe in shallow:
                # Inside the shallower slice containing our start...
                k = np.searchsorted(ps, s, side="right")
                j = np.maximum(k - 1, 0)
                inside = (k > 0) & (pe[j] > s)
                e = np.where(inside, np.minimum(e, pe[j]), e)
                # ...and over before the next shallower slice begins.
                nxt = ps[np.minimum(k, len(ps) - 1)]
                e = np.where(k < len(ps), np.minimum(e, nxt), e)
            e = np.maximum(e, s)
            out[sel] = e
            shallow.append((s, e))
    return out


# --------------------------------------------------------------------------
# the export

class _Slices:
    """Complete slices gathered from every table before nesting."""

    def __init__(self):
        self.parts = []

    def add(self, kind, thread, start, end, level):
        self.parts.append((kind, np.asarray(thread, dtype=np.int64),
                           np.asarray(start, dtype=np.int64),
                           np.asarray(end, dtype=np.int64),
                           np.broadcast_to(np.asarray(level, np.int8),
                                           len(start))))

    def nest(self):
        """Nested ends of each part, and how many slices were cut."""
        if not self.parts:
            return {}, 0
        th, s, e, lv = (np.concatenate([p[i] for p in self.parts])
                        for i in range(1, 5))
        fixed = nest_slices(th, s, e, lv)
        out, pos = {}, 0
        for kind, _, start, end, _ in self.parts:
            out[kind] = fixed[pos:pos + len(start)]
            pos += len(start)
        return out, int(np.count_nonzero(fixed != np.maximum(e, s)))


def _row_weights(trace):
    """(start_ns, events) per row of every table: what each row will
    emit, for ``max_events``."""
    starts, weights = [], []
    locks = trace.locks
    ho_rows = trace.handoffs()["row"].to_numpy()
    w = 1 + 2 * locks["contended"].to_numpy().astype(np.int64)
    w[ho_rows] += 2
    # An AIO request or a timer firing also draws its request path's flow.
    per_row = {"exits": 1, "locks": w, "loop": 2, "bh": 1, "timers": 1 + 4,
               "aio": 9 + 6, "irqs": 1}
    for name, (a, _) in SPANS.items():
        ts = trace.arrow(name).column(a).to_numpy()
        starts.append(ts)
        weights.append(np.broadcast_to(per_row[name], len(ts)))
    return np.concatenate(starts), np.concatenate(weights)


def _path_flows(trace, lo, hi):
    """The request paths (:mod:`paths`) with every stage matched that lie in
    ``[lo, hi)``, as flow arrows: per kind, ``(kind, n, hops)`` where each
    hop is ``(path, src_thread, src_ts, dst_thread, dst_ts)`` (``path``: the
    index of the path, 0 .. n-1, in the hop's rows).  Every timestamp lies
    inside a slice of its thread.

    A block request: its OUT exit -> the worker's I/O -> the completion
    bottom half -> the vCPU's exit whose end let the interrupt in (when it
    was handling one; in the guest, it took it at once).  A timer tick:
    the main loop at the deadline -> the timer callback -> the vCPU's exit
    likewise."""
    out = []
    for kind in _paths.KINDS:                   # a loop over kinds
        if _paths.missing_tables(trace, kind):
            continue
        p = _paths.request_paths(trace, kind)
        start = p["start_ns"].to_numpy(dtype=np.int64, na_value=-1)
        end = p["end_ns"].to_numpy(dtype=np.int64, na_value=-1)
        keep = p["matched"].to_numpy() & (start >= lo) & (end >= 0) & (end <= hi)
        if not keep.any():
            continue
        p, start, end = p[keep], start[keep], end[keep]
        n = len(p)
        idx = np.arange(n)
        vcpu = p["thread"].to_numpy().astype(np.int64)
        loop = p["loop_thread"].to_numpy().astype(np.int64)
        raise_ts = trace.irqs["ts_ns"].to_numpy()[p["raise_row"].to_numpy()]
        # The exit the vCPU was handling when the interrupt reached it: the
        # one whose entry is the path's end (userspace irqchip: the last
        # exit before the inject).
        exit_row = _paths._index(trace).exits.last_at(vcpu, end)[0]
        entry = trace.exits["entry_ns"].to_numpy(dtype=np.int64, na_value=-1)[
            np.maximum(exit_row, 0)] if len(trace.exits) else np.full(n, -1)
        handled = (exit_row >= 0) & (entry >= 0) & \
            (p["delivery_ns"].to_numpy(dtype=np.int64, na_value=0) > 0)
        last = (idx[handled], loop[handled], raise_ts[handled],
                vcpu[handled], np.maximum(entry[handled] - 1, 0))
        if kind == "block":
            aio = trace.aio
            rows = p["aio_row"].to_numpy()
            a_start = aio["start_ns"].to_numpy()[rows]
            a_done = aio["done_ns"].to_numpy()[rows]
            worker = p["worker"].to_numpy().astype(np.int64)
            run = trace.bh["run_ns"].to_numpy()[p["bh_row"].to_numpy()]
            hops = [(idx, vcpu, start + 1, worker, np.minimum(a_start + 1, a_done)),
                    (idx, worker, np.maximum(a_done - 1, a_start), loop, run + 1), last]
        else:
            fire = trace.timers["fire_ns"].to_numpy()[p["timer_row"].to_numpy()]
            hops = [(idx, loop, start, loop, fire + 1), last]
        out.append((kind, n, hops))
    return out


def _cut_for(trace, budget):
    """The end time up to which rows fit in *budget* events, or None when
    they all do."""
    ts, w = _row_weights(trace)
    if w.sum() <= budget:
        return None
    order = np.argsort(ts, kind="stable")
    ts, total = ts[order], np.cumsum(w[order])
    k = int(np.searchsorted(total, budget, side="right"))
    return int(ts[k])        # rows starting before ts[k] fit


def _thread_meta(trace):
    """(tid lookup by thread id, metadata event lines)."""
    th = trace.threads
    ids = th["thread"].to_numpy().astype(np.int64)
    tids = th["tid"].to_numpy().astype(np.int64)
    if len(np.unique(tids)) != len(tids) or (tids <= PID).any():
        tids = ids + _TID_FALLBACK
    lut = np.arange(1 << 16, dtype=np.int64) - (1 << 15) + _TID_FALLBACK
    lut[ids + (1 << 15)] = tids
    roles = th["role"].astype(str).to_numpy()
    rank = np.array([_ROLE_ORDER.get(r, 3) for r in roles])  # per thread
    sort_index = np.argsort(np.lexsort((ids, rank)))
    names = th["name"].astype(str).to_numpy()
    lines = []
    for tid, name, idx in zip(tids, names, sort_index):     # per thread
        lines.append(json.dumps({"ph": "M", "name": "thread_name", "pid": PID,
                                 "tid": int(tid), "ts": 0,
                                 "args": {"name": str(name)}}))
        lines.append(json.dumps({"ph": "M", "name": "thread_sort_index",
                                 "pid": PID, "tid": int(tid), "ts": 0,
                                 "args": {"sort_index": int(idx)}}))
    return lut, lines


class _Writer:
    """Streams events into the ``traceEvents`` array."""

    def __init__(self, f):
        self.f = f
        self.count = 0

    def lines(self, lines):
        for line in lines:                  # metadata: a few per thread
            self.f.write(((",\n" if self.count else "") + line).encode())
            self.count += 1

    def array(self, arr, events_per_row=1):
        if not self.count:
            raise RuntimeError("write the metadata events first")
        self.count += _write_array(self.f, arr) * events_per_row


def export_perfetto(trace, path, window=None, max_events=None,
                    progress=True):
    """Write *trace* as Chrome trace-event JSON (Perfetto, chrome://tracing).

    Parameters
    ----------
    trace : Trace
    path : str or os.PathLike
        Output ``.json`` file.
    window : (int, int), optional
        ``(start_ns, end_ns)``: rows overlapping it, kept whole.
    max_events : int, optional
        At most this many events: when the (windowed) trace has more, the
        export stops at the time where the budget runs out, so what is
        there is complete.  The returned ``cut_ns`` says where.
    progress : bool
        Progress line on a terminal's stderr.

    Returns
    -------
    dict
        ``path``, ``events`` (written), ``start_ns`` (the time of
        ``ts = 0``), ``window`` (ns), ``cut_ns`` (None unless
        *max_events* shortened the window), ``clamped_slices`` (slices
        cut to nest, see :func:`nest_slices`).

    Notes
    -----
    Timestamps are microseconds since ``start_ns`` (the trace start) with
    nanosecond decimals.  Flow starts are placed 1 ns inside the end of the
    source slice and flow ends 1 ns inside the start of the target slice,
    so each binds to its slice and no other.

    Examples
    --------
    >>> info = export_perfetto(t, "out.json", max_events=1_000_000)  # doctest: +SKIP
    >>> info["events"], info["cut_ns"]                               # doctest: +SKIP
    """
    if max_events is not None and not (isinstance(max_events, (int, np.integer))
                                       and max_events >= 0):
        raise ConfigError(f"max_events must be an integer >= 0 (or None: no "
                          f"limit), not {max_events!r}")
    if window is not None and not (len(window) == 2 and int(window[0]) < int(window[1])):
        raise ConfigError(f"window must be (start_ns, end_ns) with start < end, "
                          f"not {window!r}")
    bar = Progress(11, "export", enabled=None if progress else False)
    lo, hi = (trace.start_ns, trace.end_ns) if window is None else window
    sub = trace if window is None else trace.window(lo, hi)
    lut, meta_lines = _thread_meta(trace)
    cut = None
    if max_events is not None:
        bar.update(1, "counting events")
        cut = _cut_for(sub, max(int(max_events) - len(meta_lines) - 1, 0))
        if cut is not None:
            sub = sub.window(lo, cut)
            hi = cut
    # ts = 0 at the trace start, or earlier if a row starts before it
    # (timestamps are written unsigned).
    firsts = [pc.min(sub.arrow(name).column(a)).as_py()
              for name, (a, _) in SPANS.items() if sub.arrow(name).num_rows]
    t0 = min([trace.start_ns] + firsts)
    end_ns = sub.end_ns

    bar.update(1, "nesting slices")
    ex, lk, lp = sub.exits, sub.locks, sub.loop
    bh, tm, aio = sub.bh, sub.timers, sub.aio
    ex_end = ex["entry_ns"].to_numpy(dtype=np.int64, na_value=end_ns)
    is_bql = (lk["lock"] == "bql").to_numpy()
    slices = _Slices()
    slices.add("exit", ex["thread"], ex["exit_ns"], ex_end, LEVELS["exit"])
    slices.add("lock", lk["thread"], lk["acquired_ns"], lk["released_ns"],
               np.where(is_bql, LEVELS["bql"], LEVELS["lock"]))
    slices.add("poll", lp["thread"], lp["poll_enter_ns"], lp["poll_exit_ns"],
               LEVELS["poll"])
    slices.add("dispatch", lp["thread"], lp["poll_exit_ns"],
               lp["dispatch_end_ns"], LEVELS["dispatch"])
    slices.add("bh", bh["thread"], bh["run_ns"], bh["done_ns"], LEVELS["bh"])
    slices.add("timer", tm["thread"], tm["fire_ns"], tm["done_ns"],
               LEVELS["timer"])
    slices.add("aio", aio["thread"], aio["start_ns"], aio["done_ns"],
               LEVELS["aio"])
    ends, clamped = slices.nest()
    names = dict(zip(trace.threads["thread"].astype(int),
                     trace.threads["name"].astype(str)))

    def tid(thread):
        return _int(lut[np.asarray(thread, dtype=np.int64) + (1 << 15)])

    def rel(ns):
        return np.asarray(ns, dtype=np.int64) - t0

    def chunks(n):
        return [slice(i, min(i + _CHUNK, n)) for i in range(0, n, _CHUNK)]

    def x_events(w, cat, name, thread, start, end, args):
        """X events; *name* is a JSON literal or one per row, *args* a
        callable of a row slice giving the text inside ``"args":{...}``."""
        for c in chunks(len(start)):
            s = rel(start[c])
            w.array(_join(',\n{"ph":"X","cat":"', cat, '","name":',
                          name if isinstance(name, str) else name[c],
                          f',"pid":{PID},"tid":', tid(thread[c]),
                          ',"ts":', _us(s), ',"dur":',
                          _us(rel(end[c]) - s), ',"args":{', args(c), "}}"))

    info = {"path": os.fspath(path), "start_ns": int(t0),
            "window": [int(lo), int(hi)], "cut_ns": cut,
            "clamped_slices": clamped}
    with open(path, "wb") as f:
        f.write(b'{"displayTimeUnit":"ns","traceEvents":[\n')
        w = _Writer(f)
        config = trace.meta.get("config") or {}
        w.lines([json.dumps({"ph": "M", "name": "process_name", "pid": PID,
                             "tid": 0, "ts": 0, "args": {
                                 "name": f"kvmscope {config.get('guest', '')}"
                                         .strip()}})] + meta_lines)

        # ---- complete slices on thread tracks -------------------------
        bar.update(1, "exits")
        if len(ex):
            where = _labels(lambda r, a: f'"{"port" if r == "io" else "addr"}"'
                                         f':"{int(a):#x}"',
                            ex["reason"], ex["addr"].to_numpy(), quote=False)
            device = _str(ex["device"])
            data, size = _int(ex["data"]), _int(ex["size"])
            write = _bool(ex["is_write"])
            x_events(w, "exit", _str(ex["reason"]), ex["thread"].to_numpy(),
                     ex["exit_ns"].to_numpy(), ends["exit"],
                     lambda c: _join(where[c], ',"size":', size[c],
                                     ',"write":', write[c], ',"data":',
                                     data[c], ',"device":', device[c]))
        bar.update(1, "lock holds")
        if len(lk):
            lock_name = _labels(lambda a, b: f"{a} {b}", lk["lock"],
                                lk["callsite"])
            prev_name = _labels(lambda p: names.get(p, "(none)"),
                                lk["prev_owner"].to_numpy())
            wait, hold = _int(lk["wait_ns"]), _int(lk["hold_ns"])
            contended = _bool(lk["contended"])
            x_events(w, "lock", lock_name, lk["thread"].to_numpy(),
                     lk["acquired_ns"].to_numpy(), ends["lock"],
                     lambda c: _join('"wait_ns":', wait[c], ',"hold_ns":',
                                     hold[c], ',"contended":', contended[c],
                                     ',"prev_owner":', prev_name[c]))
        bar.update(1, "main loop, bottom halves, timers")
        if len(lp):
            it = _int(lp["iter"])
            timeout, nready = _int(lp["timeout_ns"]), _int(lp["nready"])
            x_events(w, "loop", '"poll"', lp["thread"].to_numpy(),
                     lp["poll_enter_ns"].to_numpy(), ends["poll"],
                     lambda c: _join('"iter":', it[c], ',"timeout_ns":',
                                     timeout[c]))
            x_events(w, "loop", '"dispatch"', lp["thread"].to_numpy(),
                     lp["poll_exit_ns"].to_numpy(), ends["dispatch"],
                     lambda c: _join('"iter":', it[c], ',"nready":',
                                     nready[c]))
        if len(bh):
            delay = _int(bh["delay_ns"])
            by = _labels(lambda p: names.get(p, str(p)),
                         bh["sched_thread"].to_numpy())
            idle = _bool(bh["idle"])
            x_events(w, "bh", _str(bh["name"]), bh["thread"].to_numpy(),
                     bh["run_ns"].to_numpy(), ends["bh"],
                     lambda c: _join('"delay_ns":', delay[c],
                                     ',"scheduled_by":', by[c], ',"idle":',
                                     idle[c]))
        if len(tm):
            late = _int(tm["late_ns"])
            x_events(w, "timer", _str(tm["name"]), tm["thread"].to_numpy(),
                     tm["fire_ns"].to_numpy(), ends["timer"],
                     lambda c: _join('"late_ns":', late[c]))
        bar.update(1, "AIO")
        if len(aio):
            cols = {k: _int(aio[k]) for k in ("req", "offset", "length",
                                              "result", "queue_ns",
                                              "completion_ns")}
            x_events(w, "aio", _labels(lambda o: f"aio {o}", aio["op"]),
                     aio["thread"].to_numpy(),
                     aio["start_ns"].to_numpy(), ends["aio"],
                     lambda c: _join('"req":', cols["req"][c], ',"offset":',
                                     cols["offset"][c], ',"length":',
                                     cols["length"][c], ',"result":',
                                     cols["result"][c], ',"queue_ns":',
                                     cols["queue_ns"][c],
                                     ',"completion_ns":',
                                     cols["completion_ns"][c]))

        # ---- instants, async tracks, flows ------------------------------
        bar.update(1, "interrupts")
        irq = sub.irqs
        if len(irq):
            name = _labels(lambda k: f"irq {k}", irq["kind"])
            line, vec, vcpu = (_int(irq[k]) for k in ("line", "vector",
                                                      "vcpu"))
            th, ts = irq["thread"].to_numpy(), irq["ts_ns"].to_numpy()
            for c in chunks(len(irq)):
                w.array(_join(',\n{"ph":"i","s":"t","cat":"irq","name":',
                              name[c], f',"pid":{PID},"tid":', tid(th[c]),
                              ',"ts":', _us(rel(ts[c])), ',"args":{"line":',
                              line[c], ',"vector":', vec[c], ',"vcpu":',
                              vcpu[c], "}}"))
        bar.update(1, "lock waits")
        waits = sub.lock_waits()
        if len(waits):
            who = _labels(lambda t, k: f"{t} waits for {k}",
                          waits["thread_name"], waits["lock"])
            wid = _int(waits["row"])
            site = _str(waits["callsite"])
            wns = _int(waits["wait_ns"])
            th = waits["thread"].to_numpy()
            s, e = waits["start_ns"].to_numpy(), waits["end_ns"].to_numpy()
            for c in chunks(len(waits)):
                head = (f',"cat":"lock_wait","pid":{PID},"tid":',
                        tid(th[c]), ',"id":', wid[c], ',"name":', who[c])
                w.array(_join(',\n{"ph":"b"', *head, ',"ts":',
                              _us(rel(s[c])), ',"args":{"callsite":',
                              site[c], ',"wait_ns":', wns[c], "}}",
                              ',\n{"ph":"e"', *head, ',"ts":',
                              _us(rel(e[c])), "}"), 2)
        if len(aio):
            req = _int(aio["req"])
            th = aio["thread"].to_numpy()
            stamps = [aio[k].to_numpy() for k in ("submit_ns", "start_ns",
                                                  "done_ns", "complete_ns")]
            for stage, a, b in (("aio queue", 0, 1),
                                ("aio completion", 2, 3)):
                for c in chunks(len(aio)):
                    head = (f',"cat":"aio","name":"{stage}","pid":{PID},'
                            '"tid":', tid(th[c]), ',"id":', req[c])
                    w.array(_join(',\n{"ph":"b"', *head, ',"ts":',
                                  _us(rel(stamps[a][c])), "}",
                                  ',\n{"ph":"e"', *head, ',"ts":',
                                  _us(rel(stamps[b][c])), "}"), 2)

        bar.update(1, "flows")
        flow_id = 0

        def flows(cat, name, src_th, src_ts, dst_th, dst_ts):
            nonlocal flow_id
            n = len(src_ts)
            ids = _int(np.arange(flow_id, flow_id + n))
            flow_id += n
            for c in chunks(n):
                head = f',"cat":"{cat}","name":"{name}","pid":{PID},"id":'
                w.array(_join(',\n{"ph":"s"', head, ids[c], ',"tid":',
                              tid(src_th[c]), ',"ts":',
                              _us(rel(src_ts[c])), "}",
                              ',\n{"ph":"f","bp":"e"', head, ids[c],
                              ',"tid":', tid(dst_th[c]), ',"ts":',
                              _us(rel(dst_ts[c])), "}"), 2)

        def inside_end(s, e):       # 1 ns before the end, inside the slice
            return np.maximum(e - 1, s)

        def inside_start(s, e):     # 1 ns after the start, inside the slice
            return np.minimum(s + 1, e)

        ho = sub.handoffs()
        if len(ho):
            order = _replay.lock_order(sub)
            rank = np.empty(len(order), dtype=np.int64)
            rank[order] = np.arange(len(order))
            dst = ho["row"].to_numpy()
            src = order[rank[dst] - 1]
            acq = lk["acquired_ns"].to_numpy()
            th = lk["thread"].to_numpy()
            lock_code = lk["lock"].cat.codes.to_numpy()[dst]
            for code in np.unique(lock_code):           # a loop over locks
                lock = lk["lock"].cat.categories[code]
                m = lock_code == code
                s_, d_ = src[m], dst[m]
                flows("handoff", f"{lock} hand-off", th[s_],
                      inside_end(acq[s_], ends["lock"][s_]), th[d_],
                      inside_start(acq[d_], ends["lock"][d_]))
        if len(aio):
            st = aio["start_ns"].to_numpy()
            th_aio = aio["thread"].to_numpy()
            flows("aio_flow", "aio submit", aio["submit_thread"].to_numpy(),
                  aio["submit_ns"].to_numpy(), th_aio,
                  inside_start(st, ends["aio"]))
            mains = trace.threads.loc[trace.threads["role"] == "main",
                                      "thread"].to_numpy()
            if len(mains):
                flows("aio_flow", "aio complete", th_aio,
                      inside_end(st, ends["aio"]),
                      np.full(len(aio), mains[0]),
                      aio["complete_ns"].to_numpy())

        # Request paths: each one chain of flow arrows (one flow id per
        # request) through the threads it crossed.
        bar.update(1, "request paths")
        for kind, n, hops in _path_flows(trace, lo, hi):   # a loop over kinds
            name = "block request" if kind == "block" else "timer tick"
            head = f',"cat":"path","name":"{name}","pid":{PID},"id":'
            # One flow per request: "s" at its first point, a "t" step at
            # every point between, "f" at its last (paths differ in length).
            points = [(path, th, ts) for path, s_th, s_ts, d_th, d_ts in hops
                      for th, ts in ((s_th, s_ts), (d_th, d_ts))]
            last = np.full(n, -1)
            for j, (path, _, _) in enumerate(points):       # a loop over points
                last[path] = j
            for j, (path, th, ts) in enumerate(points):
                for phase, sel in (("s", np.full(len(path), j == 0)),
                                   ("t", (last[path] != j) & (j > 0)),
                                   ("f", (last[path] == j) & (j > 0))):
                    at = np.flatnonzero(sel)
                    if not len(at):
                        continue
                    bind = ',"bp":"e"' if phase != "s" else ""
                    for c in chunks(len(at)):
                        k = at[c]
                        w.array(_join(f',\n{{"ph":"{phase}"{bind}', head, _int(flow_id + path[k]),
                                      ',"tid":', tid(th[k]), ',"ts":', _us(rel(ts[k])), "}"), 1)
            flow_id += n

        info["events"] = w.count
        other = {"kvmscope_trace": os.fspath(trace.path or ""),
                 # the trace's clock (CLOCK_REALTIME for an imported QEMU log)
                 "clock": (trace.meta["clock"].get("name") or "CLOCK_MONOTONIC")
                 if isinstance(trace.meta.get("clock"), dict) else "CLOCK_MONOTONIC",
                 **{k: v for k, v in info.items() if k != "path"}}
        f.write(f"\n],\n\"otherData\":{json.dumps(other)}}}\n".encode())
    bar.update(1, "done")
    bar.close()
    return info
