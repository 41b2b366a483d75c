"""The Trace facade: a loaded kvmscope trace with its tables, selection,
replay, statistics and plots as methods.

A :class:`Trace` holds one Arrow table per trace table (see
docs/trace-format.md) and exposes each as a typed pandas DataFrame with a few
derived columns.  Replay and statistics are methods that return DataFrames.

Layers, each importing only those before it: the format
(:mod:`~kvmscope.analysis.schema`), loading (:mod:`~kvmscope.analysis.load`),
replay and statistics (:mod:`~kvmscope.analysis.replay`,
:mod:`~kvmscope.analysis.stats`, which take any object with the tables as
attributes), this facade, and the views (:mod:`~kvmscope.analysis.plot`,
:mod:`~kvmscope.analysis.perfetto`), which take a Trace.  The one import
against that direction is the ``plot_*`` methods here importing
:mod:`~kvmscope.analysis.plot` when they are called (facade -> view);
tests/analysis/test_structure.py checks the rest.
"""

import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .. import units
from ..errors import ConfigError
from . import blame as _blame
from . import fairness as _fairness
from . import paths as _paths
from . import reexec_seq as _reexec
from . import replay as _replay
from . import select as _select
from . import stats as _stats
from .load import (META_MAX_BYTES, STATES, TS_MAX, TraceError,  # noqa: F401 (re-exported)
                   failure_reason, frame_columns, from_tables, meta_warnings, read_dir)
from .schema import SPANS, TABLES

_INT64_MAX = np.iinfo(np.int64).max


class Trace:
    """A kvmscope trace: typed tables plus replay and statistics.

    Build one with :meth:`Trace.load` (a trace directory) or
    :meth:`Trace.from_arrow` (a directory or in-memory Arrow tables).

    Attributes
    ----------
    meta : dict
        The parsed ``meta.json``.
    path : str or None
        The trace directory, if loaded from disk.
    warnings : list of str
        Non-fatal problems found while loading (a truncated table, a run
        that was killed, lost records).  Never printed by the library.

    Examples
    --------
    >>> from kvmscope.analysis import Trace
    >>> t = Trace.load("traces/pio-storm")                # doctest: +SKIP
    >>> t.locks.groupby("callsite", observed=True).hold_ns.sum()  # doctest: +SKIP
    >>> t.window(t.start_ns, t.start_ns + 10_000_000).lock_stats()  # doctest: +SKIP
    """

    def __init__(self, tables, meta, path=None, warnings=(), complete=True,
                 cut=None, base=None):
        self._tables = dict(tables)
        self.meta = meta
        self.path = path
        self.warnings = list(warnings)
        # False once rows were filtered out (window/select): checks that need
        # every acquisition of a lock (prev_owner) are then skipped.
        self.complete = complete
        # Tables whose end was cut off (name -> why), and the whole trace a
        # window or selection came from: where data is missing is a
        # property of the recording, not of the rows kept.
        self.cut = dict(cut or {})
        self._base = base
        self._frames = {}
        self._cache = {}

    # -- constructors -------------------------------------------------------

    @classmethod
    def load(cls, path):
        """Load and validate a trace directory.

        Parameters
        ----------
        path : str or os.PathLike
            Directory holding ``meta.json`` and ``<table>.arrows`` files.

        Returns
        -------
        Trace

        Raises
        ------
        TraceError
            The directory or ``meta.json`` is missing or corrupt, an Arrow
            file is corrupt, or a column is missing or has the wrong type.

        Examples
        --------
        >>> t = Trace.load("traces/pio-storm")      # doctest: +SKIP
        >>> t.warnings                               # doctest: +SKIP
        ['locks.arrows: truncated final batch dropped; kept 41 complete ...']
        """
        path = os.fspath(path)
        tables, meta, warnings, cut = read_dir(path)
        return cls(tables, meta, path=path, warnings=warnings, cut=cut)

    @classmethod
    def from_arrow(cls, source, meta=None):
        """Build a Trace from a directory or from in-memory Arrow tables.

        Parameters
        ----------
        source : str, os.PathLike or mapping of str to pyarrow.Table
            A trace directory (same as :meth:`load`), or table name ->
            table; absent tables are empty.
        meta : dict, optional
            ``meta.json`` content for in-memory tables (default: minimal).

        Examples
        --------
        >>> import pyarrow as pa
        >>> from kvmscope.analysis.schema import SCHEMAS
        >>> t = Trace.from_arrow({"locks": SCHEMAS["locks"].empty_table()})
        >>> len(t.locks)
        0
        """
        if isinstance(source, (str, os.PathLike)):
            return cls.load(source)
        tables, meta = from_tables(source, meta)
        return cls(tables, meta, warnings=meta_warnings(meta))

    # -- tables -------------------------------------------------------------

    def arrow(self, name):
        """The Arrow table *name* as loaded (no derived columns).

        Examples
        --------
        >>> t.arrow("locks").num_rows              # doctest: +SKIP
        """
        try:
            return self._tables[name]
        except KeyError:
            raise KeyError(f"no table {name!r}; tables are "
                           f"{', '.join(TABLES)}") from None

    def frame(self, name):
        """Table *name* as a pandas DataFrame with derived columns (cached;
        treat it as read-only)."""
        df = self._frames.get(name)
        if df is None:
            threads = self.threads if name != "threads" else None
            cols = frame_columns(self.arrow(name), name, threads,
                                 self.path or "trace")
            # One construction, no per-column insert: pandas would copy.
            df = pd.DataFrame(cols, copy=False)
            self._frames[name] = df
        return df

    threads = property(lambda self: self.frame("threads"),
                       doc="Threads: id, OS tid, name, role.")
    exits = property(lambda self: self.frame("exits"),
                     doc="vCPU exits, plus ``dur_ns`` (Int64) and "
                         "``thread_name``.")
    locks = property(lambda self: self.frame("locks"),
                     doc="Lock acquisitions, plus ``wait_ns``, ``hold_ns``, "
                         "``handoff`` and ``thread_name``.")
    bh = property(lambda self: self.frame("bh"),
                  doc="Bottom-half runs, plus ``delay_ns``, ``dur_ns``.")
    timers = property(lambda self: self.frame("timers"),
                      doc="Timer firings, plus ``late_ns``, ``dur_ns``.")
    aio = property(lambda self: self.frame("aio"),
                   doc="AIO requests, plus ``queue_ns``, ``io_ns``, "
                       "``completion_ns``, ``total_ns``.")
    loop = property(lambda self: self.frame("loop"),
                    doc="Main-loop iterations, plus ``poll_ns``, "
                        "``dispatch_ns``.")
    irqs = property(lambda self: self.frame("irqs"),
                    doc="Interrupt events.")

    losses = property(lambda self: self.frame("losses"),
                      doc="Runs of records a thread's ring dropped "
                          "(format 2; empty for version 1 traces).")

    @property
    def num_records(self):
        """Rows in all event tables (everything but ``threads`` and
        ``losses``)."""
        return sum(t.num_rows for n, t in self._tables.items()
                   if n not in ("threads", "losses"))

    def thread_ids(self, threads):
        """Map thread names or ids to an array of int thread ids.

        Raises ValueError for a name that is not in the threads table.
        """
        if isinstance(threads, (str, int, np.integer)):
            threads = [threads]
        by_name = dict(zip(self.threads["name"], self.threads["thread"]))
        ids = []
        for t in threads:       # a loop over the user's list, not records
            if isinstance(t, str):
                if t not in by_name:
                    raise ConfigError(f"unknown thread {t!r}; threads are "
                                     f"{', '.join(map(str, by_name))}")
                ids.append(by_name[t])
            else:
                ids.append(int(t))
        return np.asarray(ids, dtype=np.int16)

    # -- time ---------------------------------------------------------------

    def _data_bounds(self):
        if "bounds" not in self._cache:
            lo, hi = [], []
            for name, (a, b) in SPANS.items():
                t = self._tables[name]
                if t.num_rows:
                    lo.append(pc.min(t.column(a)).as_py())
                    hi.append(max(pc.max(t.column(a)).as_py(),
                                  pc.max(t.column(b)).as_py() or 0))
            self._cache["bounds"] = ((min(lo), max(hi)) if lo else (0, 0))
        return self._cache["bounds"]

    @property
    def start_ns(self):
        """Start of the trace: ``meta.json`` ``start_ns`` or the first event."""
        lo, _ = self._data_bounds()
        return int(self.meta.get("start_ns") or lo) if self.complete else lo

    @property
    def end_ns(self):
        """End of the trace: ``meta.json`` ``end_ns`` or the last event."""
        _, hi = self._data_bounds()
        end = self.meta.get("end_ns") if self.complete else None
        return int(max(end or 0, hi))

    @property
    def duration_ns(self):
        """``end_ns - start_ns``."""
        return self.end_ns - self.start_ns

    # -- selection ----------------------------------------------------------

    def window(self, start_ns=None, end_ns=None, neighbours=False):
        """Rows whose time span overlaps ``[start_ns, end_ns)``.

        Rows are kept whole, not clipped.  Spans are request..release for
        locks, exit..entry for exits (open-ended when ``entry_ns`` is null),
        scheduled..done for bottom halves, armed..done for timers,
        submit..complete for AIO, poll_enter..dispatch_end for the loop.

        Parameters
        ----------
        start_ns, end_ns : int or str, optional
            Bounds; None means unbounded.  An int is an absolute timestamp
            in ns (as in the tables); a string is read as on the command
            line: ``"10ms"`` is 10 ms after the trace start, a bare
            ``"1845840947555"`` is absolute.  ``start_ns`` may also be a
            whole ``"10ms:20ms"``.
        neighbours : bool
            Also keep, per table and thread, the last row that ends
            before the window and the first that starts at or after its
            end: what a span between two rows needs (a vCPU's time in the
            guest runs from one exit's entry to its next exit; a gap
            between two rows is idle), so that replaying the result shows
            every thread's state up to both edges.  Clip what it gives to
            the window.

        Returns
        -------
        Trace

        Examples
        --------
        >>> first_ms = t.window(t.start_ns, t.start_ns + 1_000_000)  # doctest: +SKIP
        >>> same = t.window("0ms", "1ms")                             # doctest: +SKIP
        >>> lo, hi = t.start_ns + 10_000, t.start_ns + 20_000        # doctest: +SKIP
        >>> st = t.window(lo, hi, neighbours=True).thread_states()    # doctest: +SKIP
        >>> st["start_ns"].clip(lower=lo)                            # doctest: +SKIP
        """
        if isinstance(start_ns, (str, units.Window)) or isinstance(end_ns, str):
            start_ns, end_ns = _select.window_bounds(self, start_ns, end_ns)
        lo = np.iinfo(np.int64).min if start_ns is None else int(start_ns)
        hi = _INT64_MAX if end_ns is None else int(end_ns)
        tables = dict(self._tables)
        for name, (a, b) in SPANS.items():
            t = tables[name]
            if t.num_rows:
                end = pc.fill_null(t.column(b), _INT64_MAX)
                keep = pc.and_(pc.less(t.column(a), hi),
                               pc.greater_equal(end, lo))
                if neighbours:
                    keep = pc.or_(keep, pa.array(_edge_rows(
                        t.column("thread"), t.column(a), end, lo, hi)))
                tables[name] = t.filter(keep)
        return Trace(tables, self.meta, self.path, self.warnings,
                     complete=False, cut=self.cut, base=self._base or self)

    def select(self, threads=None, callsites=None):
        """Rows emitted by the given threads (ids or names), and lock rows
        at the given call sites (names or globs such as ``"pio:*"``).

        The ``threads`` table is kept whole so that ids in ``prev_owner``
        or ``sched_thread`` still resolve to names.  A name that is not in
        the trace is an error listing the valid ones.

        Examples
        --------
        >>> t.select(threads=["vcpu0", "main"]).lock_stats()   # doctest: +SKIP
        >>> t.select(callsites="pio:*").lock_stats("callsite")  # doctest: +SKIP
        """
        if threads is None and callsites is None:
            return self
        tables = dict(self._tables)
        if threads is not None:
            if isinstance(threads, str):
                threads = _select.split_names(threads)
            ids = pa.array(self.thread_ids(threads), pa.int16())
            tables = {name: (t if name == "threads"
                             else t.filter(pc.is_in(t.column("thread"), ids)))
                      for name, t in tables.items()}
        if callsites is not None:
            if isinstance(callsites, str):
                callsites = [callsites]
            sites = _select.callsites_matching(callsites, _select.known_callsites(self))
            locks = tables["locks"]
            tables["locks"] = locks.filter(pc.is_in(
                pc.cast(locks.column("callsite"), pa.string()), pa.array(sites, pa.string())))
        return Trace(tables, self.meta, self.path, self.warnings,
                     complete=False, cut=self.cut, base=self._base or self)

    def __repr__(self):
        where = repr(self.path) if self.path else "in-memory"
        counts = ", ".join(f"{n}={t.num_rows}" for n, t in self._tables.items()
                           if t.num_rows and n != "threads")
        return (f"<Trace {where} state={self.meta.get('state', '?')} "
                f"{counts or 'empty'}>")

    # -- replay (see kvmscope.analysis.replay) -------------------------------

    def lock_intervals(self, lock=None):
        """Ownership intervals per lock; see :func:`replay.lock_intervals`."""
        return _replay.lock_intervals(self, lock)

    def lock_waits(self, lock=None):
        """Waiting intervals; see :func:`replay.lock_waits`."""
        return _replay.lock_waits(self, lock)

    def handoffs(self, lock=None):
        """Hand-offs between owners; see :func:`replay.handoffs`."""
        return _replay.handoffs(self, lock)

    def thread_states(self, threads=None):
        """Per-thread state intervals; see :func:`replay.thread_states`."""
        return _replay.thread_states(self, threads)

    def queue_depth(self, queue="aio"):
        """Queue depth over time; see :func:`replay.queue_depth`."""
        return _replay.queue_depth(self, queue)

    def check(self, tolerance_ns=0):
        """Invariant violations in the data the trace covers; see
        :func:`replay.check`."""
        return _replay.check(self, tolerance_ns)

    def coverage(self):
        """Where the data is incomplete: records lost, data that ends
        early; see :func:`replay.coverage`."""
        return _replay.coverage(self)

    @property
    def state(self):
        """How the recording ended: ``meta.json`` ``state`` (``running``
        for a run that was killed), or None when not recorded."""
        return self.meta.get("state")

    # -- statistics (see kvmscope.analysis.stats) ----------------------------

    def exit_stats(self, by="reason"):
        """``perf kvm stat``-style exit statistics; see :func:`stats.exit_stats`."""
        return _stats.exit_stats(self, by)

    def lock_stats(self, by="lock"):
        """lock_stat-style lock statistics; see :func:`stats.lock_stats`.
        Computed once per grouping (``caused()`` and the report share it);
        each call returns a copy."""
        key = ("lock_stats", by if isinstance(by, str) else tuple(by))
        if key not in self._cache:
            self._cache[key] = _stats.lock_stats(self, by)
        return self._cache[key].copy()

    def bh_stats(self):
        """Bottom-half latency per name; see :func:`stats.bh_stats`."""
        return _stats.bh_stats(self)

    def timer_stats(self):
        """Timer lateness per name; see :func:`stats.timer_stats`."""
        return _stats.timer_stats(self)

    def aio_stats(self):
        """AIO latency per op and stage; see :func:`stats.aio_stats`."""
        return _stats.aio_stats(self)

    def loop_stats(self):
        """Main-loop iteration statistics; see :func:`stats.loop_stats`."""
        return _stats.loop_stats(self)

    def cpu_stats(self):
        """CPU time, run-queue wait and context switches per thread over the
        run (kernel accounting); see :func:`stats.cpu_stats`."""
        return _stats.cpu_stats(self)

    def blockers(self, lock=None, callsites=None):
        """Who blocks whom, long form; see :func:`blame.blockers`."""
        return _blame.blockers(self, lock, callsites)

    def blockers_matrix(self, lock=None):
        """Who blocks whom, waiter x holder; see :func:`blame.blockers_matrix`."""
        return _blame.blockers_matrix(self, lock)

    def wait_anatomy(self, lock=None):
        """Each lock wait split into held, barged and hand-off time; see
        :func:`blame.wait_anatomy`."""
        return _blame.wait_anatomy(self, lock)

    def wait_anatomy_detail(self, lock=None):
        """Each (wait, overlapping owner) pair; see
        :func:`blame.wait_anatomy_detail`."""
        return _blame.wait_anatomy_detail(self, lock)

    def caused(self, lock=None, threads=None):
        """Critical sections ranked by the wait they caused others; see
        :func:`blame.caused`."""
        return _blame.caused(self, lock, threads)

    def fairness(self, lock=None):
        """Per lock and thread: owner changes, re-acquisitions while others
        waited, barging, starvation; see :func:`fairness.fairness`."""
        return _fairness.fairness(self, lock)

    def pingpong(self, lock=None, min_handoffs=16, max_gap_ns=20_000):
        """Chains of hand-offs bouncing between two threads; see
        :func:`fairness.pingpong`."""
        return _fairness.pingpong(self, lock, min_handoffs, max_gap_ns)

    def convoys(self, lock=None, min_handoffs=4):
        """Intervals in which the lock always had a waiter; see
        :func:`fairness.convoys`."""
        return _fairness.convoys(self, lock, min_handoffs)

    # -- request paths (see kvmscope.analysis.paths) -------------------------

    def request_paths(self, kind="block"):
        """Every block request (or timer tick) followed across threads, stage
        by stage, with whom its waits were behind; see
        :func:`paths.request_paths`."""
        return _paths.request_paths(self, kind)

    # -- layouts and SQL (see kvmscope.analysis.convert, .sql) --------------

    def to_parquet(self, out, compression="default"):
        """Write this trace into directory *out* (missing or empty) in the
        Parquet layout: ``<table>.parquet`` with ``thread_name`` and the
        derived durations, and ``meta.json``; see :func:`convert.write_layout`.

        Examples
        --------
        >>> t.to_parquet("mine.parquet.d")              # doctest: +SKIP
        """
        return self._write_layout(out, "parquet", compression)

    def to_arrow(self, out, compression="default"):
        """Write this trace into directory *out* in the Arrow IPC file
        layout (``<table>.arrow``, random access, ``polars.scan_ipc``)."""
        return self._write_layout(out, "arrow", compression)

    def _write_layout(self, out, layout, compression):
        from . import convert as _convert
        console = os.path.join(self.path, "console.log") if self.path else None
        return _convert.write_layout(
            out, self._tables, self.meta, layout, compression,
            warnings=[w for w in self.warnings if not w.startswith("meta.json")],
            cut=self.cut, console=console)

    def sql(self, query):
        """Run a DuckDB query over this trace's tables (each a view with the
        derived columns and ``thread_name``); returns a DataFrame.  Needs
        ``pip install 'kvmscope[runs]'``; see :func:`sql.query_trace`.

        Examples
        --------
        >>> t.sql("select callsite, quantile_disc(hold_ns, 0.99) from locks group by 1")  # doctest: +SKIP
        """
        from . import sql as _sql
        return _sql.query_trace(self, query)

    # -- re-execution (see kvmscope.analysis.reexec_seq, .whatif) ------------

    def reexecute(self, policy="barging", seed=None, **changes):
        """This recording re-executed under changed conditions (what if):
        the predicted run as a Trace; see :func:`whatif.reexecute`.

        Examples
        --------
        >>> t.reexecute(scale_hold={"pio:blk": 0.5}).lock_stats("callsite")  # doctest: +SKIP
        """
        tables, meta = _reexec.reexecute_any(self, policy=policy, seed=seed, **changes)
        return Trace.from_arrow(tables, meta)

    # -- plots (see kvmscope.analysis.plot) ----------------------------------
    # The facade -> view imports: inside the methods, because plot sits
    # above this module (it takes a Trace) and matplotlib costs ~0.5 s.

    def plot_timeline(self, *args, **kwargs):
        """Thread timeline with lock ownership and hand-offs; see
        :func:`plot.plot_timeline`."""
        from . import plot
        return plot.plot_timeline(self, *args, **kwargs)

    def plot_distributions(self, *args, **kwargs):
        """Lock wait or hold time distributions; see
        :func:`plot.plot_distributions`."""
        from . import plot
        return plot.plot_distributions(self, *args, **kwargs)

    def plot_contention(self, *args, **kwargs):
        """Contention heatmap over time; see :func:`plot.plot_contention`."""
        from . import plot
        return plot.plot_contention(self, *args, **kwargs)

    def plot_exit_rate(self, *args, **kwargs):
        """Exit rate over time per reason; see :func:`plot.plot_exit_rate`."""
        from . import plot
        return plot.plot_exit_rate(self, *args, **kwargs)

    def plot_aio_latency(self, *args, **kwargs):
        """AIO latency by stage; see :func:`plot.plot_aio_latency`."""
        from . import plot
        return plot.plot_aio_latency(self, *args, **kwargs)

    def plot_bh_latency(self, *args, **kwargs):
        """Bottom-half schedule-to-run latency; see
        :func:`plot.plot_bh_latency`."""
        from . import plot
        return plot.plot_bh_latency(self, *args, **kwargs)

    def plot_timer_lateness(self, *args, **kwargs):
        """Timer lateness; see :func:`plot.plot_timer_lateness`."""
        from . import plot
        return plot.plot_timer_lateness(self, *args, **kwargs)

    def plot_request_paths(self, *args, **kwargs):
        """Request paths stage by stage, the slowest as stacked bars; see
        :func:`plot.plot_request_paths`."""
        from . import plot
        return plot.plot_request_paths(self, *args, **kwargs)


def _edge_rows(thread, start, end, lo, hi):
    """Mask of the rows that end last before *lo* and start first at or
    after *hi*, per thread (ties all kept)."""
    th = thread.to_numpy().astype(np.int64) + (1 << 15)
    ts, te = start.to_numpy(), end.to_numpy()
    before, after = te < lo, ts >= hi
    last = np.full(1 << 16, np.iinfo(np.int64).min)
    np.maximum.at(last, th[before], te[before])
    first = np.full(1 << 16, _INT64_MAX)
    np.minimum.at(first, th[after], ts[after])
    return (before & (te == last[th])) | (after & (ts == first[th]))
