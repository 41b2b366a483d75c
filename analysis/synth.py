"""Write kvmscope trace directories without a VMM: hand-made tiny traces from
DataFrames (for tests and examples) and large generated ones (benchmarks).

Both write exactly the format of docs/trace-format.md, so what loads here
loads from a real run.
"""

import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.ipc as ipc

import pyarrow.compute as pc

from .schema import (ADDED_IN, FORMAT_NAME, FORMAT_VERSION, SCHEMAS, SPANS, TABLES,
                     is_dict_string)

_BATCH_ROWS = 65536

# Column defaults for hand-made tables: a callable of the DataFrame being
# completed, or a constant.  Timestamps and ``thread`` have no default.
_DEFAULTS = {
    "exits": {"vcpu": lambda d: d["thread"], "reason": "io", "addr": 0,
              "size": 0, "is_write": False, "data": 0, "count": 1,
              "device": "", "entry_ns": None},
    "locks": {"lock": "bql", "callsite": "unknown",
              "contended": lambda d: d["acquired_ns"] > d["request_ns"],
              "prev_owner": lambda d: _replayed_prev_owner(d)},
    "bh": {"bh": 0, "name": "bh", "sched_thread": lambda d: d["thread"],
           "idle": False},
    "timers": {"timer": 0, "name": "timer",
               "armed_ns": lambda d: d["expire_ns"]},
    "aio": {"req": lambda d: np.arange(len(d)), "op": "read", "offset": 0,
            "length": 4096, "result": lambda d: d["length"],
            "submit_thread": lambda d: d["thread"]},
    "loop": {"iter": lambda d: np.arange(len(d)), "timeout_ns": -1,
             "nready": 1},
    "irqs": {"kind": "raise", "line": -1, "vector": -1, "vcpu": -1},
    "losses": {"after_ns": None, "before_ns": None},
}


def _replayed_prev_owner(d):
    """prev_owner as the runner would record it: the thread of the previous
    acquisition of the same lock, -1 for the first."""
    order = np.lexsort((d["acquired_ns"].to_numpy(), d["lock"].to_numpy()))
    lock = d["lock"].to_numpy()[order]
    thread = d["thread"].to_numpy()[order]
    prev = np.full(len(d), -1, dtype=np.int64)
    same = np.zeros(len(d), dtype=bool)
    same[1:] = lock[1:] == lock[:-1]
    prev[order[1:][same[1:]]] = thread[:-1][same[1:]]
    return prev


def to_arrow(name, data):
    """Conform a DataFrame (or dict of columns) to the schema of table *name*,
    filling documented defaults for missing columns.

    A ``pyarrow.Table`` is returned unchanged, so tests can write tables
    that break the schema on purpose.

    Examples
    --------
    >>> t = to_arrow("locks", {"thread": [1], "request_ns": [0],
    ...                        "acquired_ns": [5], "released_ns": [9]})
    >>> t.column("lock").to_pylist(), t.column("prev_owner").to_pylist()
    (['bql'], [-1])
    """
    if isinstance(data, pa.Table):
        return data
    df = pd.DataFrame(data).reset_index(drop=True)
    # Lock defaults depend on one another; fill lock before prev_owner.
    for col, default in _DEFAULTS.get(name, {}).items():
        if col not in df.columns:
            df[col] = default(df) if callable(default) else default
    arrays = []
    for field in SCHEMAS[name]:
        if field.name not in df.columns:
            raise ValueError(f"{name}: column {field.name!r} is required")
        col = df[field.name]
        if is_dict_string(field.type):
            arr = pa.array(col.astype(str).to_numpy(dtype=object),
                           pa.string()).dictionary_encode()
        elif field.nullable:
            arr = pa.array(pd.array(col, dtype="Int64"), field.type)
        else:
            arr = pa.array(col.to_numpy(), field.type)
        arrays.append(arr)
    return pa.Table.from_arrays(arrays, schema=SCHEMAS[name])


def _default_meta(tables):
    lo, hi = [], []
    for name, t in tables.items():
        for col in t.column_names:
            # Only integer timestamps: tables written broken on purpose
            # must not break the meta.
            if (col.endswith("_ns") and col != "timeout_ns" and t.num_rows
                    and pa.types.is_integer(t.schema.field(col).type)):
                c = t.column(col)
                if c.null_count < len(c):
                    lo.append(pa.compute.min(c).as_py())
                    hi.append(pa.compute.max(c).as_py())
    return {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION,
        "kvmscope_version": "synthetic", "state": "complete",
        "clock": {"name": "CLOCK_MONOTONIC", "source": "synthetic"},
        "config": {}, "host": {}, "versions": {"pyarrow": pa.__version__},
        "start_ns": min(lo) if lo else 0, "end_ns": max(hi) if hi else 0,
        "stop_reason": "synthetic", "records": {},
        "tables": {n: (tables[n].num_rows if n in tables else 0)
                   for n in TABLES if n != "threads"},
    }


def write_trace(path, meta=None, batch_rows=_BATCH_ROWS, **tables):
    """Write a trace directory from DataFrames or Arrow tables.

    Parameters
    ----------
    path : str or os.PathLike
        Directory to create (or reuse).
    meta : dict, optional
        Keys merged into a complete default ``meta.json``; ``None`` values
        remove a key.
    batch_rows : int
        Rows per record batch in each ``.arrows`` stream.
    **tables : DataFrame, dict of columns or pyarrow.Table
        ``threads=, exits=, locks=, bh=, timers=, aio=, loop=, irqs=,
        losses=``.  Missing columns get defaults (``lock="bql"``,
        ``prev_owner`` as replayed, ``contended = acquired_ns >
        request_ns``, ...; see docs/analysis.md).  Without ``threads`` one
        row per thread id is made, named ``t<id>``.  Tables not given are
        written empty, as a recording writes them.

    Returns
    -------
    str
        The trace directory.

    Examples
    --------
    >>> import pandas as pd
    >>> p = write_trace(tmp / "t", locks=pd.DataFrame({   # doctest: +SKIP
    ...     "thread": [0, 1], "request_ns": [0, 5],
    ...     "acquired_ns": [0, 10], "released_ns": [10, 20]}))
    """
    unknown = set(tables) - set(TABLES)
    if unknown:
        raise ValueError(f"unknown tables: {', '.join(sorted(unknown))}")
    arrow = {n: to_arrow(n, d) for n, d in tables.items()
             if d is not None and n != "threads"}
    if tables.get("threads") is not None:
        arrow["threads"] = to_arrow("threads", tables["threads"])
    else:
        ids = sorted({int(x) for t in arrow.values()
                      if "thread" in t.column_names
                      for x in pa.compute.unique(t.column("thread")).to_pylist()})
        arrow["threads"] = to_arrow("threads", {
            "thread": ids, "tid": ids, "name": [f"t{i}" for i in ids],
            "role": [""] * len(ids)})
    full = _default_meta(arrow)
    for k, v in (meta or {}).items():
        if v is None:
            full.pop(k, None)
        else:
            full[k] = v
    version = full.get("format_version")
    os.makedirs(path, exist_ok=True)
    for name in TABLES:
        if isinstance(version, int) and version < ADDED_IN.get(name, 1):
            if isinstance(full.get("tables"), dict):
                full["tables"].pop(name, None)
            continue        # an older format has no such file
        table = arrow.get(name)
        if table is None:
            table = SCHEMAS[name].empty_table()
        with ipc.new_stream(os.path.join(path, name + ".arrows"),
                            table.schema) as w:
            w.write_table(table, max_chunksize=batch_rows)
    with open(os.path.join(path, "meta.json"), "w") as f:
        json.dump(full, f, indent=2)
    return os.fspath(path)


# --------------------------------------------------------------------------
# generated traces

def _exclusive_cumsum(x):
    out = np.empty_like(x)
    out[0] = 0
    np.cumsum(x[:-1], out=out[1:])
    return out


def _prev_same(key, values, fill):
    """For each row, *values* at the previous row with the same *key*."""
    order = np.argsort(key, kind="stable")
    k = key[order]
    prev = np.full(len(key), fill, dtype=values.dtype)
    same = k[1:] == k[:-1]
    prev[order[1:][same]] = values[order[:-1][same]]
    return prev


def _dict(values, categories):
    return pa.DictionaryArray.from_arrays(
        pa.array(np.asarray(values, dtype=np.int32)),
        pa.array(list(categories), pa.string()))


def generate(n_lock_records=10_000, threads=3, aio_workers=1, seed=0,
             contention=0.5, start_ns=1_000_000_000):
    """Generate consistent trace tables in memory (see :func:`make_trace`).

    Returns
    -------
    dict of str to pyarrow.Table
    """
    if threads < 2:
        raise ValueError("threads must be >= 2 (main plus one vCPU)")
    rng = np.random.default_rng(seed)
    n_nested = n_lock_records // 20
    n = n_lock_records - n_nested
    nvcpu = threads - 1
    # Thread ids: 0 main, 1..nvcpu vCPUs, then AIO workers, then the drain.
    owner = rng.integers(0, threads, n).astype(np.int16)
    hold = (300 + rng.exponential(2500, n)).astype(np.int64)
    gap = rng.integers(80, 400, n).astype(np.int64)
    gap[1:] += np.where(owner[1:] == owner[:-1], 3000, 0)
    acquired = start_ns + np.cumsum(gap) + _exclusive_cumsum(hold)
    released = acquired + hold
    prev_rel = np.concatenate([[start_ns], released[:-1]])
    own_rel = _prev_same(owner, released, start_ns)
    lower = own_rel + 300
    can = (owner != np.concatenate([[-1], owner[:-1]])) & (lower < prev_rel - 10)
    can[0] = False
    contended = can & (rng.random(n) < contention)
    request = np.where(
        contended,
        lower + (rng.random(n) * (prev_rel - lower)).astype(np.int64),
        acquired - rng.integers(10, 60, n))
    prev_owner = np.concatenate([[-1], owner[:-1]]).astype(np.int16)
    # Time outside the lock before the request / after the release, split
    # between guest and exit handling (vCPUs) or poll (main).
    margin = request - own_rel
    before = np.minimum(margin // 5, 2000)
    # after[i]: from the thread's previous release to its re-entry (vCPU)
    # or poll entry (main); after_next[i]: the same after row i itself.
    after = before
    after_next = _prev_same(owner[::-1].copy(), after[::-1].copy(), 2000)[::-1]
    is_vcpu = owner > 0
    is_mmio = rng.random(n) < 0.3
    callsite = np.where(is_vcpu, np.where(is_mmio, 1, 0), 2)

    # Nested lock taken by the main loop inside some BQL holds.
    main_rows = np.flatnonzero(~is_vcpu)
    nest = np.sort(rng.choice(main_rows, min(n_nested, len(main_rows)),
                              replace=False))
    n_req = acquired[nest] + hold[nest] // 10
    n_acq = n_req + 20
    n_rel = n_acq + hold[nest] // 5
    locks = {
        "thread": np.concatenate([owner, owner[nest]]),
        "lock": np.concatenate([np.zeros(n, np.int32),
                                np.ones(len(nest), np.int32)]),
        "callsite": np.concatenate([callsite, np.full(len(nest), 3)]),
        "request_ns": np.concatenate([request, n_req]),
        "acquired_ns": np.concatenate([acquired, n_acq]),
        "released_ns": np.concatenate([released, n_rel]),
        "prev_owner": np.concatenate(
            [prev_owner, np.where(np.arange(len(nest)) == 0, -1, 0)]),
        "contended": np.concatenate([contended, np.zeros(len(nest), bool)]),
    }
    order = np.argsort(locks["released_ns"], kind="stable")
    lock_tbl = pa.Table.from_arrays([
        pa.array(locks["thread"][order], pa.int16()),
        _dict(locks["lock"][order], ["bql", "blk:queue"]),
        _dict(locks["callsite"][order],
              ["vcpu:io", "vcpu:mmio", "main:dispatch", "main:blk-submit"]),
        pa.array(locks["request_ns"][order]),
        pa.array(locks["acquired_ns"][order]),
        pa.array(locks["released_ns"][order]),
        pa.array(locks["prev_owner"][order].astype(np.int16)),
        pa.array(locks["contended"][order]),
    ], schema=SCHEMAS["locks"])

    # One exit per vCPU lock record; the last exit of a vCPU never re-enters.
    v = np.flatnonzero(is_vcpu)
    ex_thread = owner[v]
    exit_ns = request[v] - before[v]
    entry_ns = released[v] + after_next[v]
    has_entry = np.ones(len(v), dtype=bool)
    last_of_thread = np.unique(ex_thread[::-1], return_index=True)[1]
    has_entry[len(v) - 1 - last_of_thread] = False
    mmio = is_mmio[v]
    port = rng.choice(np.array([0x3f8, 0x3fd, 0x80, 0x61], np.uint64), len(v))
    mmio_addr = rng.choice(np.array([0xd0000000, 0xd0001000], np.uint64),
                           len(v))
    dev = np.where(mmio, 2, np.where(port == 0x3f8, 0,
                   np.where(port == 0x3fd, 0, 1)))
    is_write = rng.random(len(v)) < 0.6
    exits_tbl = pa.Table.from_arrays([
        pa.array(ex_thread, pa.int16()),
        pa.array((ex_thread - 1).astype(np.int16)),
        _dict(np.where(mmio, 1, 0), ["io", "mmio"]),
        pa.array(np.where(mmio, mmio_addr, port), pa.uint64()),
        pa.array(np.where(mmio, 4, 1).astype(np.uint8)),
        pa.array(is_write),
        pa.array(rng.integers(0, 256, len(v)).astype(np.uint64)),
        pa.array(np.ones(len(v), np.uint32)),
        _dict(dev, ["serial", "post", "blk"]),
        pa.array(exit_ns),
        pa.array(entry_ns, mask=~has_entry),
    ], schema=SCHEMAS["exits"])

    # Main loop: poll until the request, dispatch until the release.
    m = main_rows
    loop_tbl = pa.Table.from_arrays([
        pa.array(np.zeros(len(m), np.int16)),
        pa.array(np.arange(len(m), dtype=np.int64)),
        pa.array(np.where(rng.random(len(m)) < 0.5, 10_000_000, -1)),
        pa.array(own_rel[m] + after[m]),
        pa.array(request[m] - before[m]),
        pa.array(rng.integers(0, 3, len(m)).astype(np.int32)),
        pa.array(released[m]),
    ], schema=SCHEMAS["loop"])

    # Bottom halves and timers run inside the main loop's BQL holds.
    b = np.sort(rng.choice(m, len(m) // 2, replace=False))
    run_ns = acquired[b] + hold[b] * 3 // 10
    bh_name = (rng.random(len(b)) < 0.7).astype(np.int32) ^ 1  # 0: blk
    bh_tbl = pa.Table.from_arrays([
        pa.array(np.zeros(len(b), np.int16)),
        pa.array(bh_name),
        _dict(bh_name, ["blk:complete", "serial:flush"]),
        pa.array(rng.integers(1, threads, len(b)).astype(np.int16)),
        pa.array(run_ns - rng.integers(1000, 20000, len(b))),
        pa.array(run_ns),
        pa.array(acquired[b] + hold[b] // 2),
        pa.array(np.zeros(len(b), bool)),
    ], schema=SCHEMAS["bh"])

    tm = np.sort(rng.choice(m, len(m) // 5, replace=False))
    fire = acquired[tm] + hold[tm] * 6 // 10
    expire = fire - rng.integers(0, 50_000, len(tm))
    timers_tbl = pa.Table.from_arrays([
        pa.array(np.zeros(len(tm), np.int16)),
        pa.array(np.ones(len(tm), np.int32)),
        _dict(np.zeros(len(tm)), ["timerdev:tick"]),
        pa.array(expire - 1_000_000),
        pa.array(expire),
        pa.array(fire),
        pa.array(acquired[tm] + hold[tm] * 8 // 10),
    ], schema=SCHEMAS["timers"])

    # Every blk:complete bottom half completes one AIO request.
    c = np.flatnonzero(bh_name == 0)
    complete = run_ns[c]
    done = complete - rng.integers(2000, 30000, len(c))
    start = done - rng.integers(5000, 50000, len(c))
    submit = start - rng.integers(0, 20000, len(c))
    op = rng.choice(3, len(c), p=[0.6, 0.35, 0.05])
    length = np.where(op == 2, 0, 4096)
    result = np.where(rng.random(len(c)) < 0.001, -5, length)
    aio_tbl = pa.Table.from_arrays([
        pa.array((threads + rng.integers(0, aio_workers, len(c)))
                 .astype(np.int16)),
        pa.array(np.arange(len(c), dtype=np.int64)),
        _dict(op, ["read", "write", "fsync"]),
        pa.array(rng.integers(0, 1 << 20, len(c)) * 4096),
        pa.array(length.astype(np.int64)),
        pa.array(result.astype(np.int64)),
        pa.array(rng.integers(1, threads, len(c)).astype(np.int16)),
        pa.array(submit), pa.array(start), pa.array(done), pa.array(complete),
    ], schema=SCHEMAS["aio"])

    # Each completion raises the block device line, injected into a vCPU.
    target = rng.integers(0, nvcpu, len(c))
    irq_ts = np.concatenate([complete + 10, complete + 5000])
    irqs_tbl = pa.Table.from_arrays([
        pa.array(np.concatenate([np.zeros(len(c)), target + 1])
                 .astype(np.int16)),
        _dict(np.r_[np.zeros(len(c)), np.ones(len(c))], ["raise", "inject"]),
        pa.array(np.r_[np.full(len(c), 14), np.full(len(c), -1)]
                 .astype(np.int32)),
        pa.array(np.r_[np.full(len(c), -1), np.full(len(c), 0x2e)]
                 .astype(np.int32)),
        pa.array(np.r_[np.full(len(c), -1), target].astype(np.int16)),
        pa.array(irq_ts),
    ], schema=SCHEMAS["irqs"])

    names = (["main"] + [f"vcpu{i}" for i in range(nvcpu)]
             + [f"aio{i}" for i in range(aio_workers)] + ["drain"])
    roles = ["main"] + ["vcpu"] * nvcpu + ["aio"] * aio_workers + ["drain"]
    ids = np.arange(len(names), dtype=np.int16)
    threads_tbl = pa.Table.from_arrays([
        pa.array(ids), pa.array((4000 + ids).astype(np.int32)),
        pa.array(names), pa.array(roles)], schema=SCHEMAS["threads"])

    def by(table, col):
        return table.take(np.argsort(table.column(col).to_numpy(),
                                     kind="stable"))
    return {"threads": threads_tbl, "exits": by(exits_tbl, "exit_ns"),
            "locks": lock_tbl, "bh": by(bh_tbl, "done_ns"),
            "timers": by(timers_tbl, "done_ns"),
            "aio": by(aio_tbl, "complete_ns"),
            "loop": loop_tbl, "irqs": by(irqs_tbl, "ts_ns")}


def make_trace(path, n_lock_records=10_000, threads=3, aio_workers=1, seed=0,
               contention=0.5, batch_rows=_BATCH_ROWS):
    """Write a generated, internally consistent trace directory.

    The BQL is taken in turn by the main loop and ``threads - 1`` vCPUs with
    random hold times and gaps; a share *contention* of the acquisitions
    that can wait do (their request falls while another thread holds the
    lock).  Each vCPU acquisition sits inside one exit (``io`` or
    ``mmio``); each main-loop acquisition follows a poll and may run a
    bottom half, a timer and a nested ``blk:queue`` lock (1 record in 20);
    ``blk:complete`` bottom halves complete AIO requests, which raise an
    interrupt.  The trace passes :meth:`Trace.check`.

    Parameters
    ----------
    path : str or os.PathLike
        Directory to write.
    n_lock_records : int
        Rows of the ``locks`` table.
    threads : int
        Threads taking the BQL: ``main`` plus ``threads - 1`` vCPUs.
    aio_workers : int
        AIO worker threads (``aio0``...).
    seed : int
        Random seed; the same arguments give the same trace.
    contention : float
        Probability that an acquisition that could wait does.
    batch_rows : int
        Rows per record batch.

    Returns
    -------
    str
        *path*.

    Examples
    --------
    >>> from kvmscope.analysis import Trace
    >>> from kvmscope.analysis.synth import make_trace
    >>> t = Trace.load(make_trace(tmp / "s", 1000, seed=1))   # doctest: +SKIP
    >>> len(t.locks), t.check().empty                           # doctest: +SKIP
    (1000, True)
    """
    tables = generate(n_lock_records, threads, aio_workers, seed, contention)
    names = tables["threads"].column("name").to_pylist()
    records = {nm: {"written": 0, "lost": 0} for nm in names}
    for t in tables.values():
        if "thread" in t.column_names and t is not tables["threads"]:
            ids, counts = np.unique(t.column("thread").to_numpy(),
                                    return_counts=True)
            for i, cnt in zip(ids, counts):     # per thread, not per record
                records[names[i]]["written"] += int(cnt)
    meta = {"config": {"guest": "synthetic", "vcpus": threads - 1,
                       "aio_workers": aio_workers, "seed": seed,
                       "n_lock_records": n_lock_records,
                       "contention": contention},
            "records": records}
    write_trace(path, meta=meta, batch_rows=batch_rows, **tables)
    return os.fspath(path)


# --------------------------------------------------------------------------
# imperfect traces: records lost, runs killed

def _writer_ids(tables, name):
    """Thread whose ring wrote each row of table *name*: the row's thread,
    except AIO rows, which the main loop writes (thread 0 in
    :func:`generate`)."""
    t = tables[name]
    if name == "aio":
        return np.zeros(t.num_rows, dtype=np.int16)
    return t.column("thread").to_numpy().astype(np.int16)


def _row_times(table, name):
    a, b = SPANS[name]
    end = table.column(b)
    if end.null_count:
        end = pc.coalesce(end, table.column(a))
    return table.column(a).to_numpy(), end.to_numpy()


def drop_records(tables, drops):
    """Remove records as a lossy ring would: per writing thread, every
    record written (its last timestamp) inside a window.

    Parameters
    ----------
    tables : dict of str to pyarrow.Table
        From :func:`generate`.
    drops : list of (thread, start_ns, end_ns)
        Windows of write time, per thread.

    Returns
    -------
    (dict of str to pyarrow.Table, pyarrow.Table)
        The remaining tables, and the ``losses`` table a format-2 recorder
        would write for them: per window that dropped anything, ``lost``,
        ``after_ns`` (end of the thread's last record written before) and
        ``before_ns`` (start of its first record written after), null where
        there is none.
    """
    out = dict(tables)
    keep = {n: np.ones(t.num_rows, dtype=bool) for n, t in tables.items()
            if n in SPANS}
    info = {n: (_writer_ids(tables, n),) + _row_times(tables[n], n)
            for n in keep}
    losses = []
    for thread, lo, hi in drops:
        lost, before, after = 0, None, None
        for n, (who, start, written) in info.items():
            mine = who == thread
            hit = mine & (written >= lo) & (written <= hi)
            lost += int(hit.sum())
            keep[n] &= ~hit
            prev = mine & (written < lo)
            if prev.any():
                after = max(after or written[prev].max(), int(written[prev].max()))
            nxt = np.flatnonzero(mine & (written > hi))
            if len(nxt):
                first = nxt[np.argmin(written[nxt])]
                cand = (int(written[first]), int(start[first]))
                before = min(before, cand) if before else cand
        if lost:
            losses.append((thread, lost, None if after is None else int(after),
                           None if before is None else before[1]))
    for n, k in keep.items():
        out[n] = tables[n].filter(pa.array(k))
    cols = list(zip(*losses)) if losses else [[], [], [], []]
    table = pa.Table.from_arrays([
        pa.array(cols[0], pa.int16()), pa.array(cols[1], pa.int64()),
        pa.array(cols[2], pa.int64()), pa.array(cols[3], pa.int64())],
        schema=SCHEMAS["losses"])
    return out, table


def cut_records(tables, ends):
    """Remove every record written after its thread's end, as a run killed
    with ``kill -9`` leaves its trace: what each thread had not yet flushed
    is missing.

    Parameters
    ----------
    tables : dict of str to pyarrow.Table
    ends : dict of int to int
        Writing thread -> the time after which its records are gone.

    Returns
    -------
    dict of str to pyarrow.Table
    """
    out = dict(tables)
    for n in SPANS:
        if n not in tables:
            continue
        who = _writer_ids(tables, n)
        _, written = _row_times(tables[n], n)
        limit = np.full(len(who), np.iinfo(np.int64).max)
        for thread, end in ends.items():
            limit[who == thread] = end
        out[n] = tables[n].filter(pa.array(written <= limit))
    return out


def _records_meta(tables, lost=None):
    names = tables["threads"].column("name").to_pylist()
    ids = tables["threads"].column("thread").to_pylist()
    by_id = dict(zip(ids, names))
    rec = {nm: {"written": 0, "lost": 0, "stalls": 0} for nm in names}
    for n in SPANS:
        who, counts = np.unique(_writer_ids(tables, n), return_counts=True)
        for i, c in zip(who, counts):          # per thread, not per record
            rec[by_id[int(i)]]["written"] += int(c)
    for i, c in (lost or {}).items():
        rec[by_id[int(i)]]["lost"] += int(c)
    return rec


def make_lossy_trace(path, n_lock_records=10_000, threads=3, seed=0,
                     runs=6, run_ns=40_000, format_version=FORMAT_VERSION,
                     batch_rows=_BATCH_ROWS):
    """Write a generated trace whose rings dropped records (lossy mode).

    A consistent :func:`generate` trace loses *runs* windows of *run_ns* of
    one thread's records each (vCPUs and the main loop in turn, spread
    over the run).  A format-2 trace places each run in its ``losses``
    table; with ``format_version=1`` only ``meta.json`` counts them, as a
    version-1 recorder did.  ``prev_owner`` still names the true previous
    owners, so a checker that ignores the losses reports hand-offs that
    the data cannot show.

    Returns
    -------
    str
        *path*.

    Examples
    --------
    >>> p = make_lossy_trace(tmp / "lossy", 5000, seed=1)   # doctest: +SKIP
    >>> Trace.load(p).coverage().kind.tolist()               # doctest: +SKIP
    ['lost', 'lost', 'lost', 'lost', 'lost', 'lost']
    """
    tables = generate(n_lock_records, threads, 1, seed)
    rng = np.random.default_rng(seed + 1)
    lo = pc.min(tables["locks"].column("acquired_ns")).as_py()
    hi = pc.max(tables["locks"].column("released_ns")).as_py()
    starts = np.sort(rng.uniform(lo, hi - run_ns, runs)).astype(np.int64)
    drops = [(i % threads, int(s), int(s) + run_ns) for i, s in enumerate(starts)]
    tables, losses = drop_records(tables, drops)
    lost = {}
    for t, n in zip(losses.column("thread").to_pylist(),
                    losses.column("lost").to_pylist()):
        lost[t] = lost.get(t, 0) + n
    meta = {"format_version": format_version,
            "config": {"guest": "synthetic", "vcpus": threads - 1, "seed": seed,
                       "lossless": False},
            "records": _records_meta(tables, lost)}
    write_trace(path, meta=meta, batch_rows=batch_rows, **tables,
                **({"losses": losses} if format_version >= 2 else {}))
    return os.fspath(path)


def make_killed_trace(path, n_lock_records=10_000, threads=3, seed=0,
                      ends=None, state="running", failure=None,
                      batch_rows=_BATCH_ROWS):
    """Write a generated trace as a run killed with ``kill -9`` leaves it.

    Each writing thread's records end at its own time: by default the main
    loop's at 90 % of the run and each vCPU's a little later (its last
    batches were flushed, the main loop's were not), so vCPU acquisitions
    name a previous owner, the main loop, whose record is missing.
    ``meta.json`` is the one written at the start of a run: ``state``
    ``running``, no ``end_ns``, ``records`` or ``tables``.

    Parameters
    ----------
    ends : dict of int to float, optional
        Thread id -> where its data ends, as a fraction of the run.
    state : str
        ``running`` (killed) or ``failed`` (then *failure* is the reason).

    Returns
    -------
    str
        *path*.
    """
    tables = generate(n_lock_records, threads, 1, seed)
    lo = pc.min(tables["locks"].column("request_ns")).as_py()
    hi = pc.max(tables["locks"].column("released_ns")).as_py()
    if ends is None:
        ends = {0: 0.90}
        ends.update({i: 0.95 + 0.01 * i for i in range(1, threads)})
    tables = cut_records(tables, {t: int(lo + f * (hi - lo)) for t, f in ends.items()})
    meta = {"state": state, "end_ns": None, "stop_reason": None,
            "records": None, "tables": None,
            "config": {"guest": "synthetic", "vcpus": threads - 1, "seed": seed}}
    if failure is not None:
        meta["failure"] = failure
    write_trace(path, meta=meta, batch_rows=batch_rows, **tables)
    return os.fspath(path)
