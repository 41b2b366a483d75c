"""Request paths: one guest request followed across threads, stage by stage.

A block request goes from the guest's OUT exit that starts it, through the
vCPU's dispatch under the BQL, the AIO queue and a worker's I/O, the main
loop's wake-up and its ``aio:complete`` bottom half, to the interrupt that
tells the guest; a timer tick goes from its deadline to its interrupt.
Each stage is the time between two recorded timestamps (:data:`STAGE_TEXT`;
docs/paths.md defines every one), so the stages of a path add up to its
end-to-end time; the waiting stages also name whom the request waited
behind.

Matching is by time and thread, vectorised: binary searches on the BQL's
ownership order, on each vCPU's exits and on the interrupt events.  The
Python loops are over threads and stages, never over requests.  A stage
whose records are missing (lost by a full ring, or never written by a run
that was killed) is left empty (``<NA>``) and counted, never guessed.

Examples
--------
>>> from kvmscope.analysis import Trace, paths
>>> t = Trace.load("traces/mixed-2vcpu")                    # doctest: +SKIP
>>> p = paths.request_paths(t, "block")                     # doctest: +SKIP
>>> paths.summary(p)                                        # doctest: +SKIP
>>> p.nlargest(5, "total_ns")                               # doctest: +SKIP
"""

import fnmatch

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from ..errors import ConfigError
from . import replay as _replay
from . import stats as _stats
from .load import thread_names

#: Kinds of request followed.
KINDS = ("block", "timer")

#: The lock whose waits the paths break out.
BQL = "bql"

#: Whom a waiting stage waited behind when nobody held anything up (the
#: wait was a wake-up or hand-off latency), or when the stage took no time.
NONE = "(none)"

#: Stages of each kind of path, in order: each ends where the next starts.
STAGES = {
    "block": ("decode", "vcpu_bql_wait", "dispatch", "queue", "io", "wakeup",
              "loop_bql_wait", "pending", "callback", "delivery"),
    "timer": ("wakeup", "loop_bql_wait", "pending", "callback", "delivery"),
}

#: Waiting stages: each has ``<stage>_holder`` and ``<stage>_holder_site``
#: columns naming whom the request waited behind.
WAITS = {"block": ("vcpu_bql_wait", "queue", "loop_bql_wait"),
         "timer": ("loop_bql_wait",)}

#: Each stage as "start -> end" in words (docs/paths.md names the columns).
STAGE_TEXT = {
    "decode": "OUT exit -> the vCPU asks for the BQL",
    "vcpu_bql_wait": "the vCPU waits for the BQL",
    "dispatch": "device handler -> request queued",
    "queue": "AIO queue -> a worker picks it up",
    "io": "the worker's read/write/fsync",
    "wakeup": "I/O done (eventfd) -> the main loop asks for the BQL",
    "loop_bql_wait": "the main loop waits for the BQL",
    "pending": "BQL taken -> the completion bottom half starts",
    "callback": "callback -> interrupt raised",
    "delivery": "interrupt raised -> the vCPU is in the guest",
}
#: Where a timer path's stage differs from the block path's of that name.
TIMER_TEXT = {"wakeup": "deadline -> the main loop asks for the BQL",
              "pending": "BQL taken -> the timer callback starts"}

#: Timer stages whose sum is the lateness (``fire_ns - expire_ns``).
LATE = ("wakeup", "loop_bql_wait", "pending")

#: Keys of :func:`sort_paths` (``kvmscope path --sort``): ``total`` (end to
#: end), ``start`` (time order), ``late`` (timer lateness) or a stage.
SORT_KEYS = ("total", "start", "late") + tuple(
    dict.fromkeys(STAGES["block"] + STAGES["timer"]))

#: Tables each kind of path is built from; the first is the one it follows.
NEEDS = {"block": ("aio", "exits", "locks", "bh", "irqs"),
         "timer": ("timers", "locks", "irqs")}

_I64_MIN = np.iinfo(np.int64).min
_I64_MAX = np.iinfo(np.int64).max
_SHIFT = 1 << 15            # int16 ids -> indices of a 2**16 lookup table


def stage_text(kind, stage):
    """What *stage* of a *kind* path measures, as "start -> end"."""
    if kind == "timer" and stage in TIMER_TEXT:
        return TIMER_TEXT[stage]
    return STAGE_TEXT[stage]


# --------------------------------------------------------------------------
# what the matching searches, read from the Arrow tables (the locks and
# exits of a large trace cost more to convert to pandas than to search)

def _dict_mask(col, values):
    """Rows of a dictionary column whose value is one of *values*."""
    parts = []
    for chunk in col.chunks:        # a loop over record batches
        words = chunk.dictionary.to_pylist()
        want = [i for i, w in enumerate(words) if w in values]
        parts.append(np.isin(chunk.indices.to_numpy(zero_copy_only=False), want))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)


def _cols(trace, table, names):
    """Columns of a table as numpy arrays (dictionary columns as pandas
    Categoricals), straight from Arrow."""
    t = trace.arrow(table)
    out = {}
    for name in names:          # a loop over columns
        c = t.column(name)
        if str(c.type).startswith("dictionary"):
            out[name] = pd.Categorical(c.to_pandas()) if len(c) else pd.Categorical([])
        else:
            out[name] = c.to_numpy()
    return out


#: "No such thread": outside the int16 range of thread ids.
_NO_THREAD = -(1 << 20)


def _lut(keys, values, default=-1):
    """A 2**16 lookup table of int16 *keys* -> *values*."""
    lut = np.full(1 << 16, default, dtype=np.int64)
    lut[np.asarray(keys, dtype=np.int64) + _SHIFT] = values
    return lut


def _look(lut, keys, default=-1):
    """*lut* at int16 *keys*; *default* for keys outside the int16 range."""
    keys = np.asarray(keys, dtype=np.int64)
    inside = (keys >= -_SHIFT) & (keys < _SHIFT)
    return np.where(inside, lut[np.where(inside, keys, 0) + _SHIFT], default)


class _Groups:
    """Events sorted by (group, time): per group, the last event at or
    before a time and the first at or after it."""

    def __init__(self, group, ts):
        group = np.asarray(group)
        order = np.argsort(group, kind="stable")     # a radix sort on int16
        g, t = group[order], ts[order]
        new = np.ones(len(g), dtype=bool)
        new[1:] = g[1:] != g[:-1]
        back = np.zeros(len(g), dtype=bool)
        back[1:] = (t[1:] < t[:-1]) & ~new[1:]
        if back.any():                              # not in time order per group
            order = np.lexsort((ts, group))
            g, t = group[order], ts[order]
        self.order, self.ts = order, t
        starts = np.flatnonzero(new)
        self.bounds = {int(k): (int(s), int(e)) for k, s, e in
                       zip(g[starts], starts, np.r_[starts[1:], len(g)])}

    def search(self, group, ts, side="right"):
        """Position (in ``order``) of the last event of *group* at or before
        *ts* (``side="right"``) or the first at or after it (``"left"``),
        -1 where there is none; and the start and end positions of the
        group's events (0, 0 for a group without any)."""
        pos = np.full(len(ts), -1, dtype=np.int64)
        start = np.zeros(len(ts), dtype=np.int64)
        end = np.zeros(len(ts), dtype=np.int64)
        for key in np.unique(group):            # a loop over groups
            got = self.bounds.get(int(key))
            if got is None:
                continue
            s, e = got
            sel = np.flatnonzero(group == key)
            k = np.searchsorted(self.ts[s:e], ts[sel], side=side)
            if side == "right":
                pos[sel] = np.where(k >= 1, s + k - 1, -1)
            else:
                pos[sel] = np.where(k < e - s, s + k, -1)
            start[sel], end[sel] = s, e
        return pos, start, end


class _Owners:
    """The BQL's acquisitions in acquisition order (*positions*)."""

    def __init__(self, trace):
        lk = self._lk = trace.arrow("locks")
        acq = lk.column("acquired_ns").to_numpy()
        mask = _dict_mask(lk.column("lock"), (BQL,))
        nbql = int(mask.sum())
        if nbql < len(mask):
            # Other locks sort after every BQL acquisition, then are cut off.
            acq = np.where(mask, acq, _I64_MAX)
        self.rows = np.argsort(acq, kind="stable")[:nbql]
        self.acq = acq[self.rows]
        self._rel = lk.column("released_ns").to_numpy()
        self._thread = lk.column("thread").to_numpy()
        self._cache = {}
        # Latest release so far: the owners that may overlap a time.
        self.covered = self._rel[self.rows]
        np.maximum.accumulate(self.covered, out=self.covered)

    def __len__(self):
        return len(self.acq)

    def rel(self, pos):
        return self._rel[self.rows[pos]]

    def thread(self, pos):
        return self._thread[self.rows[pos]]

    def row(self, pos):
        """Rows (in ``locks``) at positions *pos*; -1 for position -1."""
        if not len(self):
            return np.full(len(pos), -1, dtype=np.int64)
        return np.where(pos >= 0, self.rows[np.maximum(pos, 0)], -1)

    def column(self, name, pos):
        """Column *name* of ``locks`` at positions *pos*, as Arrow."""
        return self._lk.column(name).take(self.rows[pos])

    def _numpy(self, name):
        # Converted once: a take from a table of many batches costs about
        # as much as converting the whole column.
        got = self._cache.get(name)
        if got is None:
            got = self._cache[name] = self._lk.column(name).to_numpy(zero_copy_only=False)
        return got

    def contended(self, pos):
        return self._numpy("contended")[self.rows[pos]]

    def req(self, pos, ok):
        """``request_ns`` at positions *pos* where *ok*, else 0."""
        if not len(self):
            return np.zeros(len(pos), dtype=np.int64)
        return np.where(ok, self._numpy("request_ns")[self.rows[np.maximum(pos, 0)]], 0)

    def acquired(self, pos, ok):
        """``acquired_ns`` at positions *pos* where *ok*, else 0."""
        if not len(self):
            return np.zeros(len(pos), dtype=np.int64)
        return np.where(ok, self.acq[np.maximum(pos, 0)], 0)

    def at(self, thread, ts, valid):
        """Position of *thread*'s BQL hold that contains *ts*, or -1.  The
        BQL has one owner at a time, so that hold is the last acquisition
        at or before *ts*."""
        if not len(self):
            return np.full(len(ts), -1, dtype=np.int64)
        k = np.searchsorted(self.acq, ts, side="right") - 1
        kk = np.maximum(k, 0)
        ok = valid & (k >= 0) & (self.thread(kk) == thread) & (self.rel(kk) >= ts)
        return np.where(ok, k, -1)


class _Exits:
    """Each vCPU thread's exits in time order."""

    def __init__(self, trace):
        ex = trace.arrow("exits")
        self._cols = {"exit_ns": ex.column("exit_ns").to_numpy(),
                      "vcpu": ex.column("vcpu").to_numpy(),
                      "entry_ns": pc.fill_null(ex.column("entry_ns"), -1).to_numpy()}
        self.groups = _Groups(ex.column("thread").to_numpy(), self._cols["exit_ns"])
        ids = list(self.groups.bounds)
        firsts = self.groups.order[[s for s, _ in self.groups.bounds.values()]] \
            if ids else np.zeros(0, np.int64)
        v = self._cols["vcpu"][firsts]
        self.vcpu_of = _lut(ids, v)                 # thread -> vCPU index
        self.thread_of = _lut(v, ids, _NO_THREAD)   # vCPU index -> thread

    def _at(self, name, rows, fill=0):
        """Column *name* at *rows*; *fill* for row -1 and for nulls."""
        col = self._cols[name]
        if not len(col):
            return np.full(len(rows), fill, dtype=np.int64)
        return np.where(rows >= 0, col[np.maximum(rows, 0)], fill)

    def exit_at(self, rows):
        return self._at("exit_ns", rows)

    def entry_at(self, rows):
        """``entry_ns`` at *rows*; -1 where the vCPU never re-entered."""
        return self._at("entry_ns", rows, -1)

    def vcpu_at(self, rows):
        return self._at("vcpu", rows, -1)

    def last_at(self, thread, ts):
        """(row, next exit_ns) of *thread*'s last exit at or before *ts*
        (row -1: none; next: the thread's following exit, or the int64
        maximum when there is none)."""
        pos, start, end = self.groups.search(thread, ts, "right")
        has = pos >= 0
        row = np.where(has, self.groups.order[np.maximum(pos, 0)], -1) \
            if len(self.groups.order) else pos
        nxt = np.where(has, pos + 1, start)
        more = nxt < end
        last = max(len(self.groups.ts) - 1, 0)
        ts_next = self.groups.ts[np.minimum(nxt, last)] if len(self.groups.ts) \
            else np.zeros(len(ts), np.int64)
        return row, np.where(more, ts_next, _I64_MAX)

    def containing(self, thread, ts):
        """Row of *thread*'s exit whose handling contains *ts*
        (``exit_ns <= ts <= entry_ns``, or an exit never re-entered), or -1."""
        row, _ = self.last_at(thread, ts)
        en = self.entry_at(row)
        return np.where((row >= 0) & ((en < 0) | (en >= ts)), row, -1)


class _Runs:
    """Bottom-half runs in time order."""

    def __init__(self, trace):
        bh = _cols(trace, "bh", ("thread", "run_ns", "done_ns"))
        self.rows = np.argsort(bh["run_ns"], kind="stable")
        self.run = bh["run_ns"][self.rows]
        self.done = bh["done_ns"][self.rows]
        self.thread = bh["thread"][self.rows].astype(np.int64)


class _Irqs:
    """``raise`` events per thread, ``inject`` events per (vCPU, vector)."""

    def __init__(self, trace):
        irq = trace.arrow("irqs")
        self.thread = irq.column("thread").to_numpy().astype(np.int64)
        self.ts = irq.column("ts_ns").to_numpy()
        self.vcpu = irq.column("vcpu").to_numpy().astype(np.int64)
        self.vector = irq.column("vector").to_numpy().astype(np.int64)
        self.raises = np.flatnonzero(_dict_mask(irq.column("kind"), ("raise",)))
        self.injects = np.flatnonzero(_dict_mask(irq.column("kind"), ("inject",)))
        self.by_thread = _Groups(self.thread[self.raises], self.ts[self.raises])
        self.by_target = _Groups(self._key(self.vcpu[self.injects], self.vector[self.injects]),
                                 self.ts[self.injects])
        self.user = bool(len(self.injects)) or \
            (trace.meta.get("config") or {}).get("irqchip") == "user"

    @staticmethod
    def _key(vcpu, vector):
        return np.asarray(vcpu, np.int64) * 4096 + np.asarray(vector, np.int64)

    def last_raise(self, thread, lo, hi):
        """Row of the last ``raise`` by *thread* in ``[lo, hi]``, or -1."""
        pos = self.by_thread.search(thread, hi, "right")[0]
        row = np.where(pos >= 0, self.raises[self.by_thread.order[np.maximum(pos, 0)]]
                       if len(self.raises) else -1, -1)
        ts = self.ts[np.maximum(row, 0)] if len(self.ts) else np.zeros(len(hi), np.int64)
        return np.where((row >= 0) & (ts >= lo), row, -1)

    def first_inject(self, vcpu, vector, ts):
        """Row of the first ``inject`` of *vector* into *vcpu* at or after
        *ts*, or -1."""
        pos = self.by_target.search(self._key(vcpu, vector), ts, "left")[0]
        return np.where(pos >= 0, self.injects[self.by_target.order[np.maximum(pos, 0)]]
                        if len(self.injects) else -1, -1)


class _Index:
    """What the matching searches, built once per trace (cached on it)."""

    def __init__(self, trace):
        self.owners = _Owners(trace)
        self.exits = _Exits(trace)
        self.irqs = _Irqs(trace)
        self.bh = _Runs(trace)
        self.busy = None
        # Where each thread's records may be missing (lost, or a killed run).
        self.gaps = _replay._coverage(trace)[1]

    def touches(self, thread, lo, hi, where):
        """*where*, less the queries whose ``[lo, hi]`` meets a time at which
        *thread*'s records may be missing."""
        if not self.gaps or not where.any():
            return where
        q = np.flatnonzero(where)
        out = where.copy()
        out[q] = ~_replay._touches(self.gaps, thread[q], lo[q], hi[q])
        return out


def _index(trace):
    got = trace._cache.get("paths_index")
    if got is None:
        got = trace._cache["paths_index"] = _Index(trace)
    return got


# --------------------------------------------------------------------------
# matching

def _delivery(ix, vcpu, vector, ts, valid):
    """When each raised interrupt reached the guest: ``(end_ns, row, ok)``
    per raise at *ts* for *vcpu*.

    In-kernel irqchip: the kernel injects at the next entry into the guest,
    so the end is the ``entry_ns`` of the exit the vCPU was handling at
    *ts* (``row``: that exit), or *ts* itself when it was in the guest
    (``row`` -1).  Userspace irqchip: the end is the vCPU's next ``inject``
    of that vector (``row``: that irqs row), just before its ``KVM_RUN``.
    Not ok where a record that would decide it may be missing."""
    vthread = _look(ix.exits.thread_of, vcpu, _NO_THREAD)
    ok = valid & (vthread != _NO_THREAD)
    if ix.irqs.user:
        inj = ix.irqs.first_inject(vcpu, vector, ts)
        ok &= inj >= 0
        end = ix.irqs.ts[np.maximum(inj, 0)] if len(ix.irqs.ts) else np.zeros(len(ts), np.int64)
        row = inj
        # Not the inject of a later raise, found because this one's was lost.
        check, hi = ok, end
    else:
        last, nxt = ix.exits.last_at(np.where(ok, vthread, _I64_MIN), ts)
        en = ix.exits.entry_at(last)
        handling = (last >= 0) & ((en < 0) | (en > ts))
        ok &= ~(handling & (en < 0))            # never re-entered the guest
        end = np.where(handling, en, ts)
        row = np.where(handling, last, -1)
        # In the guest means no exit between the raise and the vCPU's next
        # exit: where its records may be missing there, that is unknown.
        check, hi = ok & ~handling, nxt
    ok = ix.touches(vthread, ts, hi, check) | (ok & ~check)
    return np.where(ok, end, 0), np.where(ok, row, -1), ok


def _longest(q, k, ov):
    """Per query of the (query, candidate, overlap) pairs, which come in
    query order: the candidate with the longest overlap, the first one on a
    tie; ``(queries, candidates, overlaps)``."""
    keep = ov > 0
    q, k, ov = q[keep], k[keep], ov[keep]
    if not len(q):
        return q, k, ov
    starts = np.flatnonzero(np.r_[True, q[1:] != q[:-1]])
    best = np.maximum.reduceat(ov, starts)
    group = np.cumsum(np.r_[False, q[1:] != q[:-1]])
    top = np.flatnonzero(ov == best[group])
    first = np.r_[True, q[top][1:] != q[top][:-1]]
    top = top[first]
    return q[top], k[top], ov[top]


def _pairs(first, last):
    """(query, candidate) pairs for candidates ``first[i] .. last[i] - 1``."""
    cnt = np.maximum(last - first, 0)
    total = int(cnt.sum())
    q = np.repeat(np.arange(len(first)), cnt)
    k = np.repeat(first - (np.cumsum(cnt) - cnt), cnt) + np.arange(total)
    return q, k


def _bql_holder(ix, pos, lo):
    """The BQL owner that held the lock longest while the waiter at owner
    position *pos* waited from *lo* to its acquisition: its position, or -1.

    This is :func:`blame.wait_anatomy`'s holder (every other acquisition
    is an owner, an instant shared by overlapping owners goes to the first,
    the earliest on a tie), on the part of the wait from *lo*: the whole
    wait when *lo* is the request."""
    o = ix.owners
    out = np.full(len(pos), -1, dtype=np.int64)
    sel = np.flatnonzero(pos >= 0)
    if not len(sel):
        return out
    p = pos[sel]
    hi = o.acq[p]
    first = np.searchsorted(o.covered, lo[sel], side="right")
    q, k = _pairs(first, p)
    # An owner's time starts after every earlier owner's release.
    start = np.maximum(o.acq[k], np.where(k > 0, o.covered[np.maximum(k - 1, 0)], _I64_MIN))
    ov = np.minimum(o.rel(k), hi[q]) - np.maximum(start, lo[sel][q])
    q, k, _ = _longest(q, k, ov)
    out[sel[q]] = k
    return out


class _Busy:
    """The AIO workers' I/O intervals (``start_ns`` to ``done_ns``), per
    worker in time order: what kept the workers busy."""

    def __init__(self, start, done, worker):
        self.per_worker = []
        for w in np.unique(worker):             # a loop over workers
            mine = np.flatnonzero(worker == w)
            mine = mine[np.argsort(start[mine], kind="stable")]
            s, e = start[mine], done[mine]
            self.per_worker.append((mine, s, e, np.maximum.accumulate(e)))

    def holder(self, lo, hi):
        """For each wait ``[lo, hi]`` in the queue, the request (its index)
        whose I/O overlapped it longest (the earliest on a tie), or -1."""
        qs, ks, ovs, sts = [], [], [], []
        for mine, s, e, cover in self.per_worker:   # a loop over workers
            q, k = _pairs(np.searchsorted(cover, lo, side="right"),
                          np.searchsorted(s, hi, side="left"))
            ov = np.minimum(e[k], hi[q]) - np.maximum(s[k], lo[q])
            keep = ov > 0
            qs.append(q[keep])
            ks.append(mine[k[keep]])
            ovs.append(ov[keep])
            sts.append(s[k[keep]])
        out = np.full(len(lo), -1, dtype=np.int64)
        if qs:
            q, k, ov, st = (np.concatenate(x) for x in (qs, ks, ovs, sts))
            o = np.lexsort((st, q))             # query, then start order
            q, k, _ = _longest(q[o], k[o], ov[o])
            out[q] = k
        return out


#: Requests handled at once: temporaries this size are reused by the
#: allocator instead of being fresh pages, which on a large trace cost
#: more to fault in than the work done on them.
_CHUNK = 1 << 16


class _Out:
    """The output columns, allocated once and filled chunk by chunk."""

    def __init__(self, n):
        self.n = n
        self.cols = {}

    def put(self, name, sl, values, dtype=np.int64):
        arr = self.cols.get(name)
        if arr is None:
            arr = self.cols[name] = np.empty(self.n, dtype=dtype)
        arr[sl] = values

    def stages(self, kind, sl, milestones):
        """Write start, end, total and the stages of the chunk *sl*; return
        each stage's effective start and validity (for the holders)."""
        eff, run = [], None
        for ts, ok in milestones:               # a loop over milestones
            cur = np.where(ok, ts, _I64_MIN)
            run = cur if run is None else np.maximum(run, cur)
            eff.append(run)
        t0, ok0 = milestones[0]
        ok_end = ok0 & milestones[-1][1]
        self.put("start_ns", sl, t0)
        self.put("start_ns?", sl, ok0, bool)
        self.put("end_ns", sl, eff[-1])
        self.put("total_ns", sl, eff[-1] - t0)
        self.put("end_ns?", sl, ok_end, bool)
        self.put("total_ns?", sl, ok_end, bool)
        matched = ok0.copy()
        starts = {}
        for i, stage in enumerate(STAGES[kind]):    # a loop over stages
            ok = milestones[i][1] & milestones[i + 1][1]
            self.put(f"{stage}_ns", sl, eff[i + 1] - eff[i])
            self.put(f"{stage}_ns?", sl, ok, bool)
            matched &= ok
            starts[stage] = (eff[i], ok)
        self.put("matched", sl, matched, bool)
        return starts

    def nullable(self, name):
        ok = self.cols.pop(name + "?")
        values = self.cols.pop(name)
        values[~ok] = 0
        return pd.arrays.IntegerArray(values, ~ok)


def _nullable(values, ok):
    return pd.arrays.IntegerArray(np.where(ok, values, 0).astype(np.int64, copy=False),
                                  ~np.asarray(ok, dtype=bool))


def _labels(cat, state):
    """*cat* (a Categorical) where *state* > 0, ``(none)`` where it is 0,
    missing where it is below 0; unused categories dropped."""
    cats = list(cat.categories)
    if NONE not in cats:
        cats.append(NONE)
    codes = np.asarray(cat.codes, dtype=np.int64)
    codes = np.where(state > 0, codes, np.where(state == 0, cats.index(NONE), -1))
    used = np.zeros(len(cats) + 1, dtype=bool)
    used[codes + 1] = True
    keep = np.flatnonzero(used[1:])
    remap = np.full(len(cats) + 1, -1, dtype=np.int64)
    remap[keep + 1] = np.arange(len(keep))
    return pd.Categorical.from_codes(remap[codes + 1],
                                     categories=[cats[i] for i in keep])


def _thread_cat(trace, ids):
    ids = np.asarray(ids, dtype=np.int64)
    return thread_names(np.where(ids >= -_SHIFT, ids, 0), trace.threads)


def _block_chunk(ix, src, sl, out):
    """Match the block requests of chunk *sl* (positions in *src*)."""
    o, ex, irq = ix.owners, ix.exits, ix.irqs
    sub_th = src["submit_thread"][sl]
    submit, start, done, complete = (src[c][sl] for c in ("submit_ns", "start_ns",
                                                          "done_ns", "complete_ns"))
    n = len(submit)
    yes = np.ones(n, dtype=bool)

    # The vCPU: the exit whose handling queued the request, and its BQL hold.
    exit_row = ex.containing(sub_th, submit)
    has_exit = exit_row >= 0
    k1 = o.at(sub_th, submit, yes)
    has_k1 = k1 >= 0
    vcpu = np.where(has_exit, ex.vcpu_at(exit_row), _look(ex.vcpu_of, sub_th))

    # The main loop: the bottom-half run that completed it, the BQL hold it
    # ran in, and the interrupt the completion raised.
    bh = ix.bh
    kb = np.searchsorted(bh.run, complete, side="right") - 1
    kbb = np.maximum(kb, 0)
    has_bh = (kb >= 0) & (bh.done[kbb] >= complete) if len(bh.run) else ~yes
    bh_row = bh.rows[kbb] if len(bh.run) else kbb
    loop_th = np.where(has_bh, bh.thread[kbb], _I64_MIN) if len(bh.run) \
        else np.full(n, _I64_MIN)
    run = bh.run[kbb] if len(bh.run) else np.zeros(n, np.int64)
    k2 = o.at(loop_th, run, has_bh)
    has_k2 = k2 >= 0
    raise_row = irq.last_raise(loop_th, run, complete)
    rr = np.maximum(raise_row, 0)
    has_raise = (raise_row >= 0) & has_bh
    if len(irq.ts):
        # Each vCPU has one request in flight: the raise is for this one's
        # vCPU (unknown when none of that thread's exits is in the trace).
        has_raise &= (irq.vcpu[rr] == vcpu) | (vcpu < 0)
        vcpu = np.where(has_raise & (vcpu < 0), irq.vcpu[rr], vcpu)
    # The raise found is this request's, unless the loop's records are missing.
    has_raise = ix.touches(loop_th, run, complete, has_raise)
    raise_ts = irq.ts[rr] if len(irq.ts) else np.zeros(n, np.int64)
    vector = irq.vector[rr] if len(irq.ts) else np.zeros(n, np.int64)
    end, deliver_row, has_end = _delivery(ix, vcpu, vector, raise_ts, has_raise)

    starts = out.stages("block", sl, [
        (ex.exit_at(exit_row), has_exit),
        (o.req(k1, has_k1), has_k1), (o.acquired(k1, has_k1), has_k1),
        (submit, yes), (start, yes), (done, yes),
        (o.req(k2, has_k2), has_k2), (o.acquired(k2, has_k2), has_k2),
        (run, has_bh), (raise_ts, has_raise), (end, has_end)])
    out.put("vcpu", sl, vcpu, np.int16)
    out.put("loop_thread", sl, np.where(has_bh, loop_th, -1), np.int16)
    for name, (r, ok) in (("exit_row", (exit_row, has_exit)),
                          ("vcpu_lock_row", (o.row(k1), has_k1)),
                          ("bh_row", (bh_row, has_bh)),
                          ("loop_lock_row", (o.row(k2), has_k2)),
                          ("raise_row", (raise_row, has_raise)),
                          ("delivery_row", (deliver_row, has_end))):
        out.put(name, sl, np.where(ok, r, -1))
    for stage, pos in (("vcpu_bql_wait", k1), ("loop_bql_wait", k2)):
        lo, ok = starts[stage]
        out.put(f"{stage}_holder_pos", sl, _wait_holder(ix, pos, lo, ok))
    lo, ok = starts["queue"]
    out.put("queue_holder_pos", sl, np.where(ok, ix.busy.holder(lo, start), -1))


def _wait_holder(ix, pos, lo, ok):
    """Owner position of the holder of each BQL waiting stage (from *lo* to
    the acquisition at owner position *pos*), or -1: only for contended
    acquisitions (an uncontended one's wait is the cost of taking a free
    lock) whose stage took time."""
    o = ix.owners
    wait = ok & (pos >= 0)
    if len(o):
        p = np.maximum(pos, 0)
        wait &= o.contended(p) & (o.acq[p] > lo)
    return _bql_holder(ix, np.where(wait, pos, -1), lo)


def _timer_chunk(ix, src, sl, out):
    """Match the timer firings of chunk *sl* (positions in *src*)."""
    o, irq = ix.owners, ix.irqs
    th = src["thread"][sl]
    expire, fire, done = (src[c][sl] for c in ("expire_ns", "fire_ns", "done_ns"))
    n = len(expire)
    yes = np.ones(n, dtype=bool)
    k2 = o.at(th, fire, yes)
    has_k2 = k2 >= 0
    raise_row = irq.last_raise(th, fire, done)
    has_raise = ix.touches(th, fire, done, raise_row >= 0)
    rr = np.maximum(raise_row, 0)
    have = len(irq.ts) > 0
    vcpu = np.where(has_raise, irq.vcpu[rr], -1) if have else np.full(n, -1)
    raise_ts = irq.ts[rr] if have else np.zeros(n, np.int64)
    vector = irq.vector[rr] if have else np.zeros(n, np.int64)
    end, deliver_row, has_end = _delivery(ix, vcpu, vector, raise_ts, has_raise)
    starts = out.stages("timer", sl, [
        (expire, yes), (o.req(k2, has_k2), has_k2), (o.acquired(k2, has_k2), has_k2),
        (fire, yes), (raise_ts, has_raise), (end, has_end)])
    out.put("vcpu", sl, vcpu, np.int16)
    for name, (r, ok) in (("loop_lock_row", (o.row(k2), has_k2)),
                          ("raise_row", (raise_row, has_raise)),
                          ("delivery_row", (deliver_row, has_end))):
        out.put(name, sl, np.where(ok, r, -1))
    lo, ok = starts["loop_bql_wait"]
    out.put("loop_bql_wait_holder_pos", sl, _wait_holder(ix, k2, lo, ok))


def _holders(trace, ix, kind, out, frame, src):
    """The ``<stage>_holder`` and ``_holder_site`` columns of the waiting
    stages: the holder where there is one and the stage took time,
    ``(none)`` where not, missing where the stage was not matched."""
    o = ix.owners
    for stage in WAITS[kind]:                   # a loop over waiting stages
        pos = out.cols.pop(f"{stage}_holder_pos")
        has = pos >= 0
        p = np.maximum(pos, 0)
        dur = frame[f"{stage}_ns"]
        state = np.where(dur._mask, -1, np.where(has & (dur._data > 0), 1, 0))
        if stage == "queue":
            thread = src["thread"][p]
            op = src["op"]
            site = pd.Categorical.from_codes(np.asarray(op.codes)[p] if len(p) else p,
                                             categories=["aio:" + str(c) for c in
                                                         op.categories])
            frame["queue_holder_req"] = _nullable(src["req"][p], state > 0)
        else:
            thread = o.thread(p) if len(o) else np.zeros(len(p), np.int64)
            sel = np.flatnonzero(state > 0)
            codes = np.full(len(p), -1, dtype=np.int64)
            cats = []
            if len(sel):
                got = pd.Categorical(o.column("callsite", p[sel]).to_pandas())
                codes[sel] = got.codes
                cats = list(got.categories)
            site = pd.Categorical.from_codes(codes, categories=cats)
        frame[f"{stage}_holder"] = _labels(_thread_cat(trace, thread), state)
        frame[f"{stage}_holder_site"] = _labels(site, state)


def _paths(trace, kind):
    ix = _index(trace)
    if kind == "block":
        src = _cols(trace, "aio", ("req", "op", "length", "result", "thread",
                                   "submit_thread", "submit_ns", "start_ns",
                                   "done_ns", "complete_ns"))
        key, chunk = "submit_ns", _block_chunk
    else:
        src = _cols(trace, "timers", ("thread", "timer", "name", "expire_ns",
                                      "fire_ns", "done_ns"))
        key, chunk = "expire_ns", _timer_chunk
    order = np.argsort(src[key], kind="stable")
    src = {c: (v[order] if isinstance(v, np.ndarray) else
               pd.Categorical.from_codes(np.asarray(v.codes)[order], dtype=v.dtype))
           for c, v in src.items()}
    for c in ("thread", "submit_thread"):
        if c in src:
            src[c] = src[c].astype(np.int64)
    n = len(order)
    if kind == "block":
        ix.busy = _Busy(src["start_ns"], src["done_ns"], src["thread"])
    out = _Out(n)
    for lo in range(0, n, _CHUNK):              # a loop over chunks of requests
        chunk(ix, src, slice(lo, min(lo + _CHUNK, n)), out)
    if not n:
        for name in ("start_ns", "end_ns", "total_ns", "matched", "vcpu") + tuple(
                f"{s}_ns" for s in STAGES[kind]):
            out.put(name, slice(0, 0), [])
            if name.endswith("_ns"):
                out.put(name + "?", slice(0, 0), [], bool)
        for name in (("loop_thread", "exit_row", "vcpu_lock_row", "bh_row")
                     if kind == "block" else ()) + ("loop_lock_row", "raise_row",
                                                   "delivery_row") + tuple(
                f"{s}_holder_pos" for s in WAITS[kind]):
            out.put(name, slice(0, 0), [])
        out.put("matched", slice(0, 0), [], bool)
    cols = {}
    vcpu = out.cols.pop("vcpu").astype(np.int16)
    if kind == "block":
        loop = out.cols.pop("loop_thread").astype(np.int16)
        cols.update({
            "req": src["req"], "op": src["op"], "length": src["length"],
            "result": src["result"], "submit_ns": src["submit_ns"], "vcpu": vcpu,
            "thread": src["submit_thread"].astype(np.int16),
            "thread_name": _thread_cat(trace, src["submit_thread"]),
            "worker": src["thread"].astype(np.int16),
            "worker_name": _thread_cat(trace, src["thread"]),
            "loop_thread": loop,
            "loop_thread_name": _labels(_thread_cat(trace, loop), np.where(loop >= 0, 1, -1))})
    else:
        vthread = _look(ix.exits.thread_of, vcpu, _NO_THREAD)
        cols.update({
            "timer": src["timer"], "name": src["name"], "vcpu": vcpu,
            "thread": np.where(vthread != _NO_THREAD, vthread, -1).astype(np.int16),
            "thread_name": _labels(_thread_cat(trace, vthread),
                                   np.where(vthread != _NO_THREAD, 1, -1)),
            "loop_thread": src["thread"].astype(np.int16),
            "loop_thread_name": _thread_cat(trace, src["thread"])})
    for name in ("start_ns", "end_ns", "total_ns") + tuple(f"{s}_ns" for s in STAGES[kind]):
        cols[name] = out.nullable(name)
    if kind == "timer":
        late = sum(cols[f"{s}_ns"].to_numpy(dtype=np.int64, na_value=0) for s in LATE)
        ok = np.logical_and.reduce([~cols[f"{s}_ns"].isna() for s in LATE])
        cols["late_ns"] = _nullable(late, ok)
    _holders(trace, ix, kind, out, cols, src)
    cols["matched"] = out.cols.pop("matched")
    cols["aio_row" if kind == "block" else "timer_row"] = order
    cols.update(out.cols)
    first = ["start_ns", "end_ns", "total_ns"]
    order_cols = [c for c in cols if c not in first and not c.endswith("_ns")
                  and "holder" not in c and c not in ("matched",) and not c.endswith("_row")]
    order_cols = [c for c in order_cols if c != "submit_ns"] + \
        (["submit_ns"] if kind == "block" else []) + first + \
        [f"{s}_ns" for s in STAGES[kind]] + (["late_ns"] if kind == "timer" else []) + \
        [c for s in WAITS[kind] for c in (f"{s}_holder", f"{s}_holder_site")] + \
        (["queue_holder_req"] if kind == "block" else []) + ["matched"] + \
        [c for c in cols if c.endswith("_row")]
    return pd.DataFrame({c: cols[c] for c in order_cols}, copy=False)


def missing_tables(trace, kind):
    """The tables a *kind* path needs that have no rows (the first of
    :data:`NEEDS` is the one it follows: ``aio`` for block requests,
    ``timers`` for ticks).

    Examples
    --------
    >>> missing_tables(Trace.load("traces/pio-storm-2vcpu"), "block")  # doctest: +SKIP
    ['aio', 'bh', 'irqs']
    """
    return [t for t in NEEDS[kind] if not trace.arrow(t).num_rows]


def request_paths(trace, kind="block"):
    """Follow every block request (or timer tick) across threads, stage by
    stage.

    A block request (one row of ``aio``) is followed from the guest's OUT
    exit that started it to the vCPU being back in the guest to take its
    completion interrupt; a timer tick (one row of ``timers``) from its
    deadline to the vCPU taking its interrupt.  Each stage runs from one
    recorded timestamp to the next (docs/paths.md):

    ==============  ========================================================
    block stage     from -> to
    ==============  ========================================================
    decode          the exit's ``exit_ns`` -> the vCPU's BQL ``request_ns``
    vcpu_bql_wait   -> ``acquired_ns`` of that BQL acquisition
    dispatch        -> the request's ``submit_ns`` (device handler)
    queue           -> ``start_ns``: a worker picked it up
    io              -> ``done_ns``: its system call returned
    wakeup          -> ``request_ns`` of the main loop's BQL acquisition in
                    which the completion ran (eventfd, poll return)
    loop_bql_wait   -> ``acquired_ns`` of it
    pending         -> ``run_ns`` of the bottom half that completed it (fd
                    handlers, timers and other bottom halves first)
    callback        -> ``ts_ns`` of the ``raise`` of its interrupt
    delivery        -> the vCPU is in the guest: the ``entry_ns`` of the
                    exit it was handling (0 if it was in the guest), or
                    with ``--irqchip user`` the ``ts_ns`` of its ``inject``
    ==============  ========================================================

    A timer path has ``wakeup`` (``expire_ns`` -> the main loop's BQL
    ``request_ns``), ``loop_bql_wait``, ``pending`` (-> ``fire_ns``),
    ``callback`` (-> the ``raise``) and ``delivery`` as above; ``late_ns``
    (``fire_ns - expire_ns``) is the sum of its first three.

    Where a timestamp comes before the previous one (the request's I/O
    finished while the main loop already waited for the BQL), the stage
    counts from the previous one: no stage is negative, and the stages add
    up to ``total_ns``.

    Parameters
    ----------
    trace : Trace
        A whole trace: paths cross threads, so select the rows of the
        result (:func:`filter_paths`) rather than windowing the trace.
    kind : {"block", "timer"}

    Returns
    -------
    DataFrame
        One row per request, in the order they were queued (block) or
        due (timer).  Block: ``req, op, length, result, vcpu, thread,
        thread_name`` (the vCPU that issued it), ``worker, worker_name,
        loop_thread, loop_thread_name, submit_ns``; timer:
        ``timer, name, vcpu, thread, thread_name`` (the vCPU it
        interrupts), ``loop_thread, loop_thread_name``.  Then
        ``start_ns, end_ns, total_ns``, ``<stage>_ns`` per stage (timers
        also ``late_ns``); per waiting stage (:data:`WAITS`)
        ``<stage>_holder`` and ``<stage>_holder_site``: the thread and
        call site it waited behind (a BQL wait: the owner that held the
        BQL longest during it, as :func:`blame.wait_anatomy` names it for
        a whole wait; the AIO queue: the worker and the op, ``aio:write``,
        of the request that kept a worker busy longest during it, whose id
        is ``queue_holder_req``; ``(none)``: nobody, a wake-up latency, or
        a stage of length 0); ``matched`` (every stage found); and
        the rows each stage was matched in (``exit_row``,
        ``vcpu_lock_row``, ``aio_row``, ``bh_row``, ``loop_lock_row``,
        ``raise_row``, ``delivery_row``; timers ``timer_row``...; -1:
        none).  Integer columns of stages that could not be matched (a
        record lost or never written) are ``<NA>``.

    Raises
    ------
    ConfigError
        An unknown *kind*.

    Examples
    --------
    >>> p = request_paths(trace, "block")                 # doctest: +SKIP
    >>> p.sort_values("total_ns").tail(3)                 # doctest: +SKIP
    >>> p.groupby("queue_holder", observed=True).queue_ns.sum()  # doctest: +SKIP
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown kind of request {kind!r}; kinds are "
                          + ", ".join(KINDS))
    return _paths(trace, kind)


# --------------------------------------------------------------------------
# summaries, selection, order

def kind_of(paths):
    """``"block"`` or ``"timer"``: which kind of :func:`request_paths`
    table *paths* is."""
    if "req" in paths.columns:
        return "block"
    if "timer" in paths.columns:
        return "timer"
    raise ConfigError("not a table of request paths (no req or timer column)")


def _values(series):
    arr = series.array
    if isinstance(arr, pd.arrays.IntegerArray):
        return arr._data, ~arr._mask
    return series.to_numpy(dtype=np.int64, na_value=0), ~series.isna().to_numpy()


def summary(paths):
    """Per stage of *paths* (a :func:`request_paths` table): how long it
    took and, for a waiting stage, whom it mostly waited behind.

    Returns
    -------
    DataFrame
        One row per stage in path order, then ``total``: ``stage, what``
        (start -> end), ``requests`` (with the stage matched),
        ``missing`` (not matched), ``total_ns, mean_ns, p50_ns, p99_ns,
        max_ns`` (nearest-rank percentiles, as :mod:`stats`),
        ``share_pct`` (of the end-to-end time of the requests whose every
        stage matched: the shares add up to 100), and ``behind``,
        ``behind_pct``: the holder thread and call site the stage waited
        behind for the largest part of its time, and that part (waiting
        stages only).

    Examples
    --------
    >>> summary(request_paths(trace, "timer"))            # doctest: +SKIP
    """
    kind = kind_of(paths)
    matched = paths["matched"].to_numpy(dtype=bool)
    tot, tot_ok = _values(paths["total_ns"])
    whole = float(tot[matched & tot_ok].sum())
    rows = []
    for stage in STAGES[kind] + ("total",):      # a loop over stages
        col = "total_ns" if stage == "total" else f"{stage}_ns"
        v, ok = _values(paths[col])
        st = _stats.summarize(np.zeros(int(ok.sum()), np.int64), v[ok], 1).iloc[0]
        share = 100.0 * v[ok & matched].sum() / whole if whole else np.nan
        behind, behind_pct = "", np.nan
        if stage in WAITS[kind]:
            behind, behind_pct = _behind(paths, stage, v, ok)
        rows.append({"stage": stage,
                     "what": "end to end" if stage == "total" else stage_text(kind, stage),
                     "requests": int(ok.sum()), "missing": int((~ok).sum()),
                     "total_ns": st["total_ns"], "mean_ns": st["mean_ns"],
                     "p50_ns": st["p50_ns"], "p99_ns": st["p99_ns"],
                     "max_ns": st["max_ns"],
                     "share_pct": 100.0 if stage == "total" and whole else share,
                     "behind": behind, "behind_pct": behind_pct})
    out = pd.DataFrame(rows)
    for c in ("total_ns", "p50_ns", "p99_ns", "max_ns"):
        out[c] = pd.array(out[c], dtype="Int64")
    return out


def _behind(paths, stage, values, ok):
    """(holder and site, percent of the stage's time) of the holder the
    waiting *stage* spent most time behind; ``("", nan)`` if none."""
    h = paths[f"{stage}_holder"].array
    site = paths[f"{stage}_holder_site"].array
    hc, sc = np.asarray(h.codes, np.int64), np.asarray(site.codes, np.int64)
    nsite = len(site.categories) + 1
    real = ok & (hc >= 0) & (sc >= 0)
    if NONE in h.categories:
        real &= hc != list(h.categories).index(NONE)
    if not real.any():
        return "", np.nan
    key = hc[real] * nsite + sc[real]
    sums = np.bincount(key, weights=values[real].astype(np.float64))
    top = int(np.argmax(sums))
    if sums[top] <= 0:
        return "", np.nan
    label = f"{h.categories[top // nsite]} {site.categories[top % nsite]}"
    return label, 100.0 * sums[top] / max(float(values[ok].sum()), 1.0)


def filter_paths(paths, window=None, threads=None, callsites=None):
    """The rows of *paths* in a window, through given threads, or behind
    given call sites.

    Parameters
    ----------
    paths : DataFrame
        A :func:`request_paths` table.
    window : (int, int), optional
        ``(start_ns, end_ns)``, absolute: paths whose span (``start_ns`` to
        ``end_ns``; a block request not matched to its exit from
        ``submit_ns``) overlaps it.
    threads : list of str, optional
        Paths that went through any of these threads: the vCPU, the AIO
        worker, the main loop.
    callsites : list of str, optional
        Paths that waited behind any of these call sites (the holder sites
        of their waiting stages).

    Returns
    -------
    DataFrame
    """
    keep = np.ones(len(paths), dtype=bool)
    if window is not None:
        lo, hi = int(window[0]), int(window[1])
        kind = kind_of(paths)
        own = paths["submit_ns" if kind == "block" else "start_ns"].to_numpy(
            dtype=np.int64, na_value=0)
        s, s_ok = _values(paths["start_ns"])
        e, e_ok = _values(paths["end_ns"])
        s = np.where(s_ok, s, own)
        e = np.where(e_ok, e, s)
        keep &= (s < hi) & (e >= lo)
    if threads is not None:
        names = set(map(str, threads))
        cols = [c for c in ("thread_name", "worker_name", "loop_thread_name") if c in paths]
        keep &= np.logical_or.reduce([paths[c].astype(object).isin(names).to_numpy()
                                      for c in cols])
    if callsites is not None:
        sites = set(map(str, callsites))
        cols = [c for c in paths.columns if c.endswith("_holder_site")]
        keep &= np.logical_or.reduce([paths[c].astype(object).isin(sites).to_numpy()
                                      for c in cols]) if cols else False
    return paths[keep].reset_index(drop=True)


def sort_paths(paths, key="total"):
    """*paths* ordered by *key*: ``start`` in time order, anything else
    (``total``, ``late``, a stage name) largest first; rows without a value
    last.  A stage the kind has not (``queue`` of a timer path) orders by
    ``total``.

    Raises
    ------
    ConfigError
        *key* is not one of :data:`SORT_KEYS`.
    """
    if key not in SORT_KEYS:
        raise ConfigError(f"unknown sort key {key!r}; keys are {', '.join(SORT_KEYS)}")
    col = f"{key}_ns"
    if col not in paths.columns:
        col = "total_ns"
    return paths.sort_values(col, ascending=key == "start", kind="stable",
                             na_position="last").reset_index(drop=True)


def select_callsites(patterns, paths_tables):
    """Call sites of the holder columns of *paths_tables* matched by the
    globs *patterns*; a glob that matches none is an error naming them."""
    known = sorted({str(v) for p in paths_tables for c in p.columns
                    if c.endswith("_holder_site") for v in p[c].cat.categories
                    if str(v) != NONE})
    out = []
    for pat in patterns:                        # a loop over the user's globs
        hits = fnmatch.filter(known, pat)
        if not hits:
            raise ConfigError(f"no request waited behind call site {pat!r}; they waited "
                              f"behind {', '.join(known) or 'none'}")
        out.extend(h for h in hits if h not in out)
    return out
