"""A run store: many traces in one Parquet dataset, partitioned by run.

Layout (docs/runs.md)::

    STORE/kvmscope-store.json          {"format": "kvmscope-store", "version": 1}
    STORE/run=<id>/meta.json           the run's meta.json (Parquet layout)
    STORE/run=<id>/run.parquet         one row: the run's id, name, start time,
                                       labels, config, host
    STORE/run=<id>/<table>.parquet     every table of the trace, with
                                       thread_name and the derived durations

Each ``run=<id>`` directory is a trace directory itself (``Trace.load``
reads it) and a Hive partition, so DuckDB (``read_parquet('STORE/run=*/
locks.parquet', hive_partitioning=true)``), polars and pyarrow datasets get
a ``run`` column.  A run is written into a staging directory, fsynced, and
renamed into place: a killed ``store add`` leaves no partial run.
"""

import datetime
import hashlib
import json
import os
import re
import shutil

from ..errors import KvmscopeError
from . import convert as _convert
from .load import TraceError, read_dir
from .schema import META_FILE, TABLES

STORE_FILE = "kvmscope-store.json"
STORE_FORMAT = "kvmscope-store"
STORE_VERSION = 1
LOCK_FILE = "store.lock"
RUN_FILE = "run.parquet"
RUN_PREFIX = "run="
STAGING_PREFIX = ".staging-"

_LABEL_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class StoreError(KvmscopeError, ValueError):
    """A store that cannot be used or an add that is refused; the message is
    one line."""


def parse_label(text):
    """``"key=value"`` -> ``(key, value)``.

    Examples
    --------
    >>> parse_label("commit=abc123")
    ('commit', 'abc123')
    """
    key, sep, value = str(text).partition("=")
    key = key.strip()
    if not sep or not _LABEL_KEY.match(key):
        raise StoreError(f"bad label {text!r}: use KEY=VALUE, KEY of letters, digits, _ . - "
                         "(e.g. commit=abc123)")
    if len(value) > 1024:
        raise StoreError(f"bad label {key!r}: value longer than 1024 characters")
    return key, value


def _labels(labels):
    if labels is None:
        return {}
    if isinstance(labels, dict):
        items = labels.items()
    else:
        items = (parse_label(x) for x in ([labels] if isinstance(labels, str) else labels))
    out = {}
    for k, v in items:
        parse_label(f"{k}={v}")
        out[str(k)] = str(v)
    return out


def run_id(tables, meta):
    """Identity of a recording: a digest of what its ``meta.json`` says of
    it (host, clock, configuration, start and end, counts) and of its
    timestamps, so that the same run copied elsewhere has the same id.

    Returns
    -------
    str
        16 hex digits.
    """
    import pyarrow.compute as pc
    keys = ("host", "clock", "config", "start_ns", "end_ns", "started_at", "records")
    ident = {k: meta.get(k) for k in keys}
    for name in ("exits", "locks"):
        t = tables[name]
        col = "exit_ns" if name == "exits" else "acquired_ns"
        ident[name] = [t.num_rows, pc.sum(t.column(col)).as_py() if t.num_rows else 0]
    text = json.dumps(ident, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def start_time(meta, path):
    """``(UTC datetime, source)`` of a run's start: ``meta.json``
    ``started_at`` (wall clock), else the modification time of its
    ``meta.json`` (written again when the run ends)."""
    text = meta.get("started_at")
    if isinstance(text, str):
        try:
            t = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
            if t.tzinfo is None:
                t = t.replace(tzinfo=datetime.timezone.utc)
            return t.astimezone(datetime.timezone.utc), "started_at"
        except ValueError:
            pass
    mtime = os.stat(os.path.join(path, META_FILE)).st_mtime
    return datetime.datetime.fromtimestamp(mtime, datetime.timezone.utc), "mtime"


def _run_row(rid, name, source, meta, labels, when, when_source):
    import pyarrow as pa
    config = meta.get("config") or {}
    host = meta.get("host") or {}
    records = meta.get("records") or {}
    row = {
        "run": rid, "name": name, "source": source,
        "start_time": when, "time_source": when_source,
        "added_at": datetime.datetime.now(datetime.timezone.utc),
        "state": meta.get("state"), "guest": config.get("guest"),
        "vcpus": config.get("vcpus"), "iterations": config.get("iterations"),
        "hostname": host.get("hostname"),
        "records_written": sum(int(r.get("written", 0)) for r in records.values()
                               if isinstance(r, dict)),
        "records_lost": sum(int(r.get("lost", 0)) for r in records.values()
                            if isinstance(r, dict)),
        "labels": sorted(labels.items()),
        "config": json.dumps(config, sort_keys=True, default=str),
        "host": json.dumps(host, sort_keys=True, default=str),
    }
    schema = pa.schema([
        ("run", pa.string()), ("name", pa.string()), ("source", pa.string()),
        ("start_time", pa.timestamp("us", tz="UTC")), ("time_source", pa.string()),
        ("added_at", pa.timestamp("us", tz="UTC")), ("state", pa.string()),
        ("guest", pa.string()), ("vcpus", pa.int64()), ("iterations", pa.int64()),
        ("hostname", pa.string()), ("records_written", pa.int64()),
        ("records_lost", pa.int64()), ("labels", pa.map_(pa.string(), pa.string())),
        ("config", pa.string()), ("host", pa.string())])
    return pa.Table.from_pylist([row], schema=schema)


def config_key(config):
    """The part of a run's configuration that decides its timings: every
    setting but where it was written and how it was shown."""
    c = dict(config or {})
    for k in ("output", "console", "compression", "force"):
        c.pop(k, None)
    return json.dumps(c, sort_keys=True, default=str)


class Store:
    """A directory of runs in one Parquet dataset, partitioned by run.

    Parameters
    ----------
    path : str or os.PathLike
        The store directory.
    create : bool
        Create it (an empty or missing directory) when it is not a store yet.

    Examples
    --------
    >>> from kvmscope.analysis import Store
    >>> s = Store("ci-store", create=True)                 # doctest: +SKIP
    >>> s.add(["runs/r1", "runs/r2"], labels={"commit": "abc123"})  # doctest: +SKIP
    >>> s.runs()[["run", "name", "start_time", "labels"]]  # doctest: +SKIP
    >>> s.sql("select run, count(*) from locks group by run")  # doctest: +SKIP
    """

    def __init__(self, path, create=False):
        self.path = os.fspath(path)
        marker = os.path.join(self.path, STORE_FILE)
        if not os.path.isfile(marker):
            if not create:
                raise StoreError(f"{self.path}: not a kvmscope store (no {STORE_FILE}; "
                                 "kvmscope store add creates one)")
            if os.path.isdir(self.path) and [f for f in os.listdir(self.path)
                                             if not f.startswith(".")]:
                raise StoreError(f"{self.path}: directory is not empty and is not a store")
            os.makedirs(self.path, exist_ok=True)
            _convert.write_json_durable(marker, {"format": STORE_FORMAT,
                                                 "version": STORE_VERSION})
            _convert.fsync_dir(self.path)
        try:
            with open(marker, encoding="utf-8") as f:
                doc = json.load(f)
        except (OSError, ValueError) as e:
            raise StoreError(f"{marker}: unreadable: {e}") from None
        if not isinstance(doc, dict) or doc.get("format") != STORE_FORMAT:
            raise StoreError(f"{marker}: not a kvmscope store")
        if doc.get("version") != STORE_VERSION:
            raise StoreError(f"{marker}: store version {doc.get('version')!r}, this kvmscope "
                             f"reads {STORE_VERSION}")

    @staticmethod
    def is_store(path):
        """Whether *path* is a store directory."""
        return os.path.isfile(os.path.join(os.fspath(path), STORE_FILE))

    # -- adding -------------------------------------------------------------

    def _lock(self):
        import fcntl
        fd = os.open(os.path.join(self.path, LOCK_FILE),
                     os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def _clean_staging(self):
        """Remove what an add that was killed left (under the store lock,
        so no add is writing it)."""
        for f in os.listdir(self.path):
            if f.startswith(STAGING_PREFIX):
                shutil.rmtree(os.path.join(self.path, f), ignore_errors=True)

    def run_dir(self, run):
        """Directory of run *run* (an id)."""
        return os.path.join(self.path, RUN_PREFIX + run)

    def add(self, traces, labels=None, name=None):
        """Add recorded runs.

        Every trace is read and validated first; a run already in the store
        (the same recording, wherever it was copied) refuses the whole add.
        Each run is then written into a staging directory, fsynced and
        renamed into place: a run is in the store whole or not at all.

        Parameters
        ----------
        traces : str, os.PathLike, or a list of them
            Trace directories (either layout).
        labels : dict or list of "key=value", optional
            Labels of every run added (a commit id, a branch, a CI job).
        name : str, optional
            Display name of a single run (default: the directory's name).

        Returns
        -------
        list of str
            The run ids added, in the order given.

        Raises
        ------
        StoreError
            A run already in the store, twice in *traces*, or a bad label.
        TraceError
            A trace cannot be read.
        """
        if isinstance(traces, (str, os.PathLike)):
            traces = [traces]
        traces = [os.fspath(t) for t in traces]
        if not traces:
            raise StoreError("no traces given")
        labels = _labels(labels)
        loaded = []
        for path in traces:
            tables, meta, warnings, cut = read_dir(path, convert=False)
            loaded.append((path, tables, meta, warnings, cut, run_id(tables, meta)))
        fd = self._lock()
        try:
            self._clean_staging()
            seen = {}
            for path, *_, rid in loaded:
                if rid in seen:
                    raise StoreError(f"{path}: the same run as {seen[rid]} (run {rid})")
                if os.path.exists(self.run_dir(rid)):
                    raise StoreError(f"{path}: already in the store as run {rid}")
                seen[rid] = path
            added = []
            for path, tables, meta, warnings, cut, rid in loaded:
                self._write_run(path, tables, meta, warnings, cut, rid, labels,
                                name if len(loaded) == 1 else None)
                added.append(rid)
            return added
        finally:
            os.close(fd)

    def _write_run(self, path, tables, meta, warnings, cut, rid, labels, name):
        import pyarrow.parquet as pq
        stage = os.path.join(self.path, f"{STAGING_PREFIX}{rid}-{os.getpid()}")
        try:
            console = os.path.join(path, "console.log")
            _convert.write_layout(stage, tables, meta, "parquet", warnings=warnings,
                                  cut=cut, console=console)
            when, source = start_time(meta, path)
            row = _run_row(rid, name or os.path.basename(os.path.abspath(path)),
                           os.path.abspath(path), meta, labels, when, source)
            tmp = os.path.join(stage, RUN_FILE + _convert.TMP_SUFFIX)
            pq.write_table(row, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, os.path.join(stage, RUN_FILE))
            _convert.fsync_dir(stage)
            os.rename(stage, self.run_dir(rid))
            _convert.fsync_dir(self.path)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise

    # -- reading ------------------------------------------------------------

    def run_ids(self):
        """Ids of the runs in the store (complete runs only)."""
        out = []
        for f in sorted(os.listdir(self.path)):
            if f.startswith(RUN_PREFIX) and os.path.isfile(
                    os.path.join(self.path, f, RUN_FILE)):
                out.append(f[len(RUN_PREFIX):])
        return out

    def runs(self, labels=None, order="time"):
        """The runs, one row each, in time (or label) order.

        Parameters
        ----------
        labels : dict or list of "key=value", optional
            Only runs with every one of these labels.
        order : str
            ``"time"`` (the runs' start time; ties by when they were added)
            or ``"label:KEY"`` (the label's value, as a number when every
            value is one).

        Returns
        -------
        pandas.DataFrame
            ``run, name, source, start_time, time_source, added_at, state,
            guest, vcpus, iterations, hostname, records_written,
            records_lost, labels`` (a dict), ``config``, ``host`` (JSON
            text); then ``position`` (0 = oldest).
        """
        import pandas as pd
        import pyarrow as pa
        import pyarrow.parquet as pq
        ids = self.run_ids()
        parts = [pq.read_table(os.path.join(self.run_dir(r), RUN_FILE)) for r in ids]
        if parts:
            df = pa.concat_tables(parts, promote_options="default").to_pandas()
        else:
            df = _run_row("", "", "", {}, {}, datetime.datetime.now(datetime.timezone.utc),
                          "").to_pandas().iloc[:0]
        df["labels"] = [dict(x) if x is not None else {} for x in df["labels"]]
        want = _labels(labels)
        if want:
            keep = [all(lab.get(k) == v for k, v in want.items()) for lab in df["labels"]]
            df = df[keep]
        df = order_runs(df, order)
        return df.reset_index(drop=True)

    def trace(self, run):
        """The :class:`~kvmscope.analysis.Trace` of run *run* (an id or a
        unique prefix of one)."""
        from .trace import Trace
        return Trace.load(self.run_dir(self.resolve(run)))

    def resolve(self, run):
        """The full id of run *run*: an id, a unique prefix, or a name."""
        ids = self.run_ids()
        if run in ids:
            return run
        hits = [r for r in ids if r.startswith(run)]
        if len(hits) == 1:
            return hits[0]
        if not hits:
            df = self.runs()
            hits = list(df.loc[df["name"] == run, "run"])
            if len(hits) == 1:
                return hits[0]
        raise StoreError(f"{run!r}: {'no' if not hits else 'more than one'} run of the store "
                         "has this id, prefix or name")

    def table_files(self, table, runs=None):
        """``[(run, path of its <table>.parquet)]`` of the given runs (default all)."""
        if table not in TABLES:
            raise StoreError(f"no table {table!r}; tables are {', '.join(TABLES)}")
        runs = self.run_ids() if runs is None else list(runs)
        return [(r, os.path.join(self.run_dir(r), table + ".parquet")) for r in runs]

    def sql(self, query):
        """Run a DuckDB query over the store; see :mod:`kvmscope.analysis.sql`.

        Returns
        -------
        pandas.DataFrame
        """
        from .sql import query_store
        return query_store(self, query)

    def __repr__(self):
        return f"<Store {self.path!r} runs={len(self.run_ids())}>"


def order_runs(df, order="time"):
    """Sort a runs DataFrame by ``order`` (``"time"`` or ``"label:KEY"``)
    and number the runs in ``position``."""
    import pandas as pd
    if order == "time":
        df = df.sort_values(["start_time", "added_at", "run"], kind="stable")
    elif isinstance(order, str) and order.startswith("label:") and len(order) > 6:
        key = order[6:]
        values = [lab.get(key) for lab in df["labels"]]
        missing = [n for n, v in zip(df["name"], values) if v is None]
        if missing:
            raise StoreError(f"--order {order}: {len(missing)} runs have no label {key!r} "
                             f"(e.g. {missing[0]})")
        nums = pd.to_numeric(pd.Series(values, index=df.index, dtype=object), errors="coerce")
        sort_key = nums if nums.notna().all() else pd.Series(values, index=df.index)
        df = df.assign(_k=sort_key).sort_values(["_k", "start_time", "run"], kind="stable") \
            .drop(columns="_k")
    else:
        raise StoreError(f"bad order {order!r}: use time or label:KEY")
    df = df.copy()
    df["position"] = range(len(df))
    return df


def open_store(path):
    """The :class:`Store` at *path*, with a :class:`StoreError` naming it
    when it is not one."""
    return Store(path)


__all__ = ["Store", "StoreError", "TraceError", "parse_label", "run_id", "order_runs"]
