"""Loading: read and validate a kvmscope trace directory (or in-memory Arrow
tables) and convert its tables to pandas columns.

This is the layer under replay, statistics and the :class:`~kvmscope.analysis.Trace`
facade: it depends only on the trace format (:mod:`kvmscope.analysis.schema`) and
imports nothing else of the analysis.
"""

import json
import os
import stat

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from ..errors import KvmscopeError
from . import convert as _convert
from .convert import LAYOUTS
from .schema import (ADDED_IN, FORMAT_NAME, FORMAT_VERSION, MAX_RESOLUTION_NS, META_FILE,
                     RUN_STATES, SCHEMAS,
                     SUPPORTED_VERSIONS, TABLES, describe, empty_table, table_file,
                     type_matches)


# Messages pyarrow gives when a stream ends in the middle of a message, which
# is what a killed writer leaves behind (as opposed to bytes that are wrong).
_SHORT_READ = ("Expected to be able to read", "Expected to read",
               "bytes available", "was null or length 0")


class TraceError(KvmscopeError, ValueError):
    """A trace directory that cannot be read: the message names the file and
    the column or problem, on one line."""


# --------------------------------------------------------------------------
# reading

#: Largest ``meta.json`` read; a real one is a few kB.
META_MAX_BYTES = 16 << 20

#: Values of ``meta.json`` ``state``.
STATES = RUN_STATES

_INT64 = (-(1 << 63), (1 << 63) - 1)


def _file_kind(mode):
    for test, what in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return "not a regular file"


def _os_reason(e):
    return e.strerror or type(e).__name__


def _stat_regular(fname, missing):
    """``os.stat`` of *fname*, which must be a regular file (symbolic links
    followed); TraceError naming the file otherwise.  Nothing is opened, so a
    FIFO or a device is never read."""
    try:
        st = os.stat(fname)
    except FileNotFoundError:
        if os.path.islink(fname):
            raise TraceError(f"{fname}: dangling symbolic link") from None
        raise TraceError(f"{fname}: {missing}") from None
    except OSError as e:
        raise TraceError(f"{fname}: cannot read: {_os_reason(e)}") from None
    if not stat.S_ISREG(st.st_mode):
        raise TraceError(f"{fname}: not a regular file "
                         f"({_file_kind(st.st_mode)})")
    return st


def _read_meta(path):
    fname = os.path.join(path, META_FILE)
    st = _stat_regular(fname, "missing (not a kvmscope trace?)")
    if st.st_size > META_MAX_BYTES:
        raise TraceError(f"{fname}: {st.st_size} bytes, more than the "
                         f"{META_MAX_BYTES >> 20} MiB a meta.json may have")
    try:
        # O_NONBLOCK: should the file have been swapped for a FIFO since
        # the stat, opening it must not wait for a writer.
        fd = os.open(fname, os.O_RDONLY | os.O_NONBLOCK
                     | getattr(os, "O_CLOEXEC", 0))
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise TraceError(f"{fname}: not a regular file")
            chunks, size = [], 0
            while size <= META_MAX_BYTES:
                chunk = os.read(fd, META_MAX_BYTES + 1 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        finally:
            os.close(fd)
    except OSError as e:
        raise TraceError(f"{fname}: cannot read: {_os_reason(e)}") from None
    if size > META_MAX_BYTES:
        raise TraceError(f"{fname}: more than the {META_MAX_BYTES >> 20} MiB "
                         "a meta.json may have")
    try:
        meta = json.loads(b"".join(chunks).decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise TraceError(f"{fname}: corrupt JSON: {_first_line(e)}") from None
    _check_meta(meta, fname)
    return meta


def _first_line(e):
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _json_type(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a number with a fraction" if v == v and abs(v) != float("inf") \
            else "not a finite number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "a list"
    return "an object"


def _is_int(v, lo=_INT64[0], hi=_INT64[1]):
    return type(v) is int and lo <= v <= hi


def _check_meta(meta, fname):
    """Check the keys of ``meta.json`` that the analysis reads: their JSON
    types and ranges.  Raises TraceError naming the first wrong key."""
    if not isinstance(meta, dict):
        raise TraceError(f"{fname}: expected a JSON object, "
                         f"got {_json_type(meta)}")
    if meta.get("format") != FORMAT_NAME:
        raise TraceError(f"{fname}: 'format' is {_short(meta.get('format'))}, "
                         f"expected {FORMAT_NAME!r}")
    version = meta.get("format_version")
    if type(version) is not int or version not in SUPPORTED_VERSIONS:
        raise TraceError(f"{fname}: unsupported format_version {_short(version)} "
                         f"(this kvmscope reads {', '.join(map(str, SUPPORTED_VERSIONS))})")

    def wrong(key, v, expected):
        what = _short(v) if type(v) is int else _json_type(v)
        raise TraceError(f"{fname}: {key!r} is {what}, expected {expected}")

    state = meta.get("state")
    if state is not None:
        if not isinstance(state, str):
            wrong("state", state, "a string")
        if state not in STATES:
            raise TraceError(f"{fname}: 'state' is {_short(state)}, expected "
                             f"one of {', '.join(STATES)}")
    for key in ("start_ns", "end_ns"):
        v = meta.get(key)
        if v is not None and not _is_int(v, 0, TS_MAX):
            wrong(key, v, f"ns of CLOCK_MONOTONIC, an integer 0 .. {TS_MAX}")
    for key in ("config", "clock", "host", "versions", "stats"):
        v = meta.get(key)
        if v is not None and not isinstance(v, dict):
            wrong(key, v, "an object")
    res = (meta.get("clock") or {}).get("resolution_ns")
    if res is not None and not _is_int(res, 1, MAX_RESOLUTION_NS):
        wrong("clock.resolution_ns", res, f"the timestamps' step in ns, an integer "
                                          f"1 .. {MAX_RESOLUTION_NS}")
    for key in ("stop_reason", "failure", "kvmscope_version", "started_at"):
        v = meta.get(key)
        if v is not None and not isinstance(v, str):
            wrong(key, v, "a string")
    guest = (meta.get("config") or {}).get("guest")
    if guest is not None and not isinstance(guest, str):
        wrong("config.guest", guest, "a string")
    records = meta.get("records")
    if records is not None:
        if not isinstance(records, dict):
            wrong("records", records, "an object")
        for name, rec in records.items():
            if not isinstance(rec, dict):
                wrong(f"records.{name}", rec, "an object")
            for k in ("written", "lost", "stalls"):
                v = rec.get(k)
                if v is not None and not _is_int(v, 0):
                    wrong(f"records.{name}.{k}", v, "a count (integer >= 0)")
    tables = meta.get("tables")
    if tables is not None:
        if not isinstance(tables, dict):
            wrong("tables", tables, "an object")
        for name, v in tables.items():
            if not _is_int(v, 0):
                wrong(f"tables.{name}", v, "a row count (integer >= 0)")
    layout = meta.get("layout")
    if layout is not None and layout not in LAYOUTS:
        raise TraceError(f"{fname}: 'layout' is {_short(layout)}, expected one "
                         f"of {', '.join(LAYOUTS)}")
    converted = meta.get("converted")
    if converted is not None:
        if not isinstance(converted, dict):
            wrong("converted", converted, "an object")
        w, c = converted.get("warnings", []), converted.get("cut", {})
        if not isinstance(w, list) or not all(isinstance(x, str) for x in w):
            wrong("converted.warnings", w, "a list of strings")
        if not isinstance(c, dict) or not all(k in TABLES and isinstance(v, str)
                                              for k, v in c.items()):
            wrong("converted.cut", c, "an object of table names to strings")


def _short(v, n=60):
    """repr of a meta value, cut to *n* characters (a value may be huge)."""
    if type(v) is int and abs(v) >= 10 ** n:
        return f"an integer of {len(str(abs(v)))} digits"   # no huge str()
    text = repr(v)
    return text if len(text) <= n else text[:n] + "..."


def _read_stream(fname):
    """Read every complete batch of an Arrow IPC stream file.

    Returns ``(table, warning_or_None)``.  A file cut short by a killed writer
    keeps its complete batches; any other damage raises TraceError.
    """
    base = os.path.basename(fname)
    st = _stat_regular(fname, "missing: every table of the format has a file")
    if st.st_size == 0:
        return None, (f"{base}: empty file (the run stopped before its "
                      "first flush)")
    try:
        # Memory-mapped: batches reference the file, nothing is copied.
        source = pa.memory_map(fname)
    except OSError as e:
        raise TraceError(f"{fname}: cannot read: {_os_reason(e)}") from None
    try:
        reader = ipc.open_stream(source)
        reader.schema.names         # decoded here, not in a later step
    except UnicodeDecodeError:
        raise TraceError(f"{fname}: corrupt Arrow stream: a column name is not "
                         "valid UTF-8") from None
    except (pa.ArrowException, OSError, MemoryError) as e:
        raise TraceError(f"{fname}: corrupt Arrow stream: "
                         f"{_first_line(e)}") from None
    batches = []
    warning = None
    while True:
        try:
            batches.append(reader.read_next_batch())
        except StopIteration:
            break
        except (pa.ArrowException, OSError, MemoryError) as e:
            msg = _first_line(e)
            if not any(s in msg for s in _SHORT_READ):
                raise TraceError(f"{fname}: corrupt Arrow stream after "
                                 f"{len(batches)} batches: {msg}") from None
            rows = sum(b.num_rows for b in batches)
            warning = (f"{base}: truncated final batch dropped; kept "
                       f"{len(batches)} complete batches ({rows} rows)")
            break
    try:
        table = pa.Table.from_batches(batches, schema=reader.schema)
    except (pa.ArrowException, MemoryError) as e:
        raise TraceError(f"{fname}: corrupt Arrow stream: {_first_line(e)}") from None
    return table, warning


def _read_layout_file(fname, name, layout):
    """Read the Parquet or Arrow IPC file of table *name*: the format's
    columns (the derived ones the file adds are dropped: they are
    recomputed).  Any damage raises TraceError: these files are written
    whole, under a temporary name, never appended to."""
    st = _stat_regular(fname, "missing: every table of the format has a file")
    what = "Parquet file" if layout == "parquet" else "Arrow IPC file"
    if st.st_size == 0:
        raise TraceError(f"{fname}: corrupt {what}: empty file")
    try:
        if layout == "parquet":
            import pyarrow.parquet as pq
            table = pq.read_table(fname, memory_map=True)
        else:
            with pa.memory_map(fname) as source:
                table = ipc.open_file(source).read_all()
    except UnicodeDecodeError:
        raise TraceError(f"{fname}: corrupt {what}: a column name is not "
                         "valid UTF-8") from None
    except (pa.ArrowException, OSError, MemoryError, ValueError, IndexError) as e:
        raise TraceError(f"{fname}: corrupt {what}: {_first_line(e)}") from None
    try:
        drop = [c for c in _convert.derived_names(name) if c in table.column_names]
        table = table.drop_columns(drop)
        # A string column another tool wrote without its dictionary.
        for field in SCHEMAS[name]:
            idx = table.schema.get_field_index(field.name)
            if idx >= 0 and pa.types.is_dictionary(field.type) and (
                    pa.types.is_string(table.schema.field(idx).type)
                    or pa.types.is_large_string(table.schema.field(idx).type)):
                table = table.set_column(idx, field.name,
                                         pc.dictionary_encode(table.column(idx)))
    except (pa.ArrowException, KeyError, UnicodeDecodeError) as e:
        raise TraceError(f"{fname}: corrupt {what}: {_first_line(e)}") from None
    return table


def _conform(table, name, where):
    """Check *table* against the schema of *name*; return it with the
    documented columns first.  Raises TraceError naming *where*."""
    try:
        return _conform_table(table, name, where)
    except UnicodeDecodeError:
        raise TraceError(f"{where}: a column name is not valid UTF-8") from None


def _conform_table(table, name, where):
    schema = SCHEMAS[name]
    names = table.schema.names
    keep = []
    for field in schema:
        idx = table.schema.get_field_index(field.name)
        if idx < 0:
            what = "twice" if names.count(field.name) > 1 else None
            raise TraceError(f"{where}: " + (f"column {field.name!r} appears twice"
                                             if what else
                                             f"missing column {field.name!r} "
                                             f"({describe(field.type)})"))
        actual = table.schema.field(idx).type
        if not type_matches(actual, field.type):
            raise TraceError(f"{where}: column {field.name!r} has type "
                             f"{actual}, expected {describe(field.type)}")
        if not field.nullable and table.column(idx).null_count:
            raise TraceError(f"{where}: column {field.name!r} has "
                             f"{table.column(idx).null_count} nulls but is "
                             "not nullable")
        keep.append(idx)
    _check_ranges(table, name, where)
    # Undocumented columns are kept when their names are unambiguous.
    extra = [i for i, c in enumerate(names)
             if c not in schema.names and names.count(c) == 1]
    table = table.select(keep + extra)
    try:
        # Offsets, UTF-8 and dictionary indices: what the batch reader does
        # not check and pandas or a renderer would trip over later.
        table.validate(full=True)
    except (pa.ArrowException, MemoryError) as e:
        raise TraceError(f"{where}: corrupt Arrow data: {_first_line(e)}") from None
    return _unique_dictionaries(table, schema, where)


def _unique_dictionaries(table, schema, where):
    """Dictionary columns whose dictionary repeats a value or holds a null
    (valid Arrow, never written by the recorder) re-encoded, so that each
    becomes a pandas category; a null that way in a column that may not
    have one is an error."""
    for i, field in enumerate(table.schema):
        if not pa.types.is_dictionary(field.type):
            continue
        col = table.column(i)
        if all(not c.dictionary.null_count
               and len(pc.unique(c.dictionary)) == len(c.dictionary)
               for c in col.chunks):
            continue
        dense = col.cast(field.type.value_type)
        documented = field.name in schema.names
        if documented and not schema.field(field.name).nullable and dense.null_count:
            raise TraceError(f"{where}: column {field.name!r} has "
                             f"{dense.null_count} nulls but is not nullable")
        table = table.set_column(i, field.name, pc.dictionary_encode(dense))
    return table


#: Largest timestamp accepted: 2**62 ns (146 years of CLOCK_MONOTONIC), so
#: that differences and sums of a few of them cannot overflow int64.
TS_MAX = 1 << 62

# Value ranges of documented integer columns beyond their type: every
# timestamp is CLOCK_MONOTONIC ns; a poll timeout is -1 (infinite) or ns.
_RANGES = {("loop", "timeout_ns"): (-1, TS_MAX), ("losses", "lost"): (1, TS_MAX)}


def _check_ranges(table, name, where):
    """TraceError for a documented timestamp or count out of its range."""
    if not table.num_rows:
        return
    for field in SCHEMAS[name]:
        key = (name, field.name)
        if key not in _RANGES and not field.name.endswith("_ns"):
            continue
        lo, hi = _RANGES.get(key, (0, TS_MAX))
        col = table.column(field.name)
        mm = pc.min_max(col).as_py()
        if mm["min"] is None or (lo <= mm["min"] and mm["max"] <= hi):
            continue
        bad = mm["min"] if mm["min"] < lo else mm["max"]
        row = pc.index(col, pa.scalar(bad, col.type)).as_py()
        raise TraceError(f"{where}: column {field.name!r} has {bad} at row {row}, "
                         f"outside {lo} .. {hi}"
                         + (" (ns of CLOCK_MONOTONIC)" if field.name.endswith("_ns")
                            else ""))


# --------------------------------------------------------------------------
# pandas conversion

def _columns(table, name):
    """Arrow -> dict of pandas columns: dictionaries become category,
    nullable ints Int64, the rest numpy (zero-copy where Arrow allows)."""
    nullable = [f.name for f in SCHEMAS[name] if f.nullable]
    df = table.drop_columns(nullable).to_pandas(split_blocks=True)
    cols = {}
    for col in table.column_names:
        if col in nullable:
            arr = table.column(col)
            values = pc.fill_null(arr, 0).to_numpy().astype(np.int64, copy=False)
            mask = arr.is_null().to_numpy(zero_copy_only=False)
            cols[col] = pd.arrays.IntegerArray(values, mask)
        else:
            cols[col] = df[col]
    return cols


def thread_names(thread_ids, threads):
    """Categorical of thread names for an int array of thread ids; an id
    missing from the threads table is named ``thread <id>``."""
    names = pd.Index(pd.unique(threads["name"].to_numpy()))
    lut = np.full(1 << 16, -1, dtype=np.int32)
    lut[threads["thread"].to_numpy().astype(np.int64) + (1 << 15)] = \
        names.get_indexer(threads["name"].to_numpy())
    idx = np.asarray(thread_ids).astype(np.int32) + (1 << 15)
    codes = lut[idx]
    if (codes < 0).any():
        taken = set(names)
        extra = []
        for u in np.unique(idx[codes < 0]):         # per unknown id
            name = f"thread {int(u) - (1 << 15)}"
            while name in taken:
                name += "?"
            taken.add(name)
            lut[u] = len(names) + len(extra)
            extra.append(name)
        names = names.append(pd.Index(extra))
        codes = lut[idx]
    return pd.Categorical.from_codes(codes, categories=names)


def _derived(cols, name):
    """Derived columns documented in docs/analysis.md."""
    def diff(a, b):
        return np.subtract(np.asarray(cols[a]), np.asarray(cols[b]))
    out = {}
    if name == "locks":
        out["wait_ns"] = diff("acquired_ns", "request_ns")
        out["hold_ns"] = diff("released_ns", "acquired_ns")
        prev = np.asarray(cols["prev_owner"])
        out["handoff"] = (prev != -1) & (prev != np.asarray(cols["thread"]))
    elif name == "exits":
        entry = cols["entry_ns"]
        out["dur_ns"] = pd.arrays.IntegerArray(
            entry._data - np.asarray(cols["exit_ns"]), entry._mask.copy())
    elif name == "bh":
        out["delay_ns"] = diff("run_ns", "scheduled_ns")
        out["dur_ns"] = diff("done_ns", "run_ns")
    elif name == "timers":
        out["late_ns"] = diff("fire_ns", "expire_ns")
        out["dur_ns"] = diff("done_ns", "fire_ns")
    elif name == "aio":
        out["queue_ns"] = diff("start_ns", "submit_ns")
        out["io_ns"] = diff("done_ns", "start_ns")
        out["completion_ns"] = diff("complete_ns", "done_ns")
        out["total_ns"] = diff("complete_ns", "submit_ns")
    elif name == "loop":
        out["poll_ns"] = diff("poll_exit_ns", "poll_enter_ns")
        out["dispatch_ns"] = diff("dispatch_end_ns", "poll_exit_ns")
    return out


# --------------------------------------------------------------------------
# whole traces

def read_dir(path, convert=True):
    """Read and validate a trace directory.

    Parameters
    ----------
    path : str or os.PathLike
        Directory holding ``meta.json`` and a file per table: the
        ``<table>.arrows`` streams of a recording, or the Parquet
        (``<table>.parquet``) or Arrow IPC file (``<table>.arrow``) layout
        that ``meta.json`` ``layout`` names.
    convert : bool
        Convert a killed recording's streams to the Parquet layout in
        place (when the directory can be written).

    Returns
    -------
    (dict, dict, list of str, dict)
        ``(tables, meta, warnings, cut)``: table name -> ``pyarrow.Table``
        (every table of the format), the parsed ``meta.json``, non-fatal
        problems, and the tables whose end was cut off (name -> why).

    Raises
    ------
    TraceError
        The directory or ``meta.json`` is missing or corrupt, an Arrow
        file is corrupt, or a column is missing or has the wrong type.
    """
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise TraceError(f"{path}: trace directory not found") from None
    except OSError as e:
        raise TraceError(f"{path}: cannot read: {_os_reason(e)}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise TraceError(f"{path}: trace directory not a directory")
    meta = _read_meta(path)
    declared = meta.get("tables") or {}
    layout = meta.get("layout") or "arrows"
    converted = meta.get("converted") or {}
    warnings = list(converted.get("warnings", []))
    tables = {}
    cut = dict(converted.get("cut", {}))
    for name in TABLES:
        if layout != "arrows":
            fname = _convert.table_path(path, name, layout)
            table = _conform(_read_layout_file(fname, name, layout), name, fname)
            tables[name] = table
            _check_declared(declared, name, table, fname, cut, warnings)
            continue
        fname = os.path.join(path, table_file(name))
        if meta["format_version"] < ADDED_IN.get(name, 1) and not os.path.lexists(fname):
            tables[name] = empty_table(name)
            continue
        table, warning = _read_stream(fname)
        if warning:
            warnings.append(warning)
        if table is None:           # empty file: nothing was flushed
            table = empty_table(name)
        else:
            table = _conform(table, name, fname)
            if warning:
                cut[name] = warning
        tables[name] = table
        _check_declared(declared, name, table, fname, cut, warnings, warning)
    if layout == "arrows" and convert and meta.get("state") in ("running", "aborted") \
            and _convert.is_killed_recording(path):
        # A killed recording: its streams become the Parquet layout once,
        # with what was found here kept in meta.json.
        if _convert.convert_killed(path, tables, meta, warnings, cut):
            meta = _read_meta(path)
    warnings.extend(meta_warnings(meta))
    return tables, meta, warnings, cut


def _check_declared(declared, name, table, fname, cut, warnings, warning=None):
    """Compare a table's rows with the count ``meta.json`` lists."""
    want, rows = declared.get(name), table.num_rows
    if want is None or want == rows:
        return
    base = os.path.basename(fname)
    if rows == 0:
        raise TraceError(f"{fname}: no rows, but meta.json says it has {want}")
    if rows < want:
        cut.setdefault(name, f"{base}: {rows} of the {want} rows "
                             "meta.json lists (the file was cut short)")
        if not warning:
            warnings.append(cut[name])
    else:
        warnings.append(f"{base}: {rows} rows, more than the {want} "
                        "meta.json lists")


def from_tables(source, meta=None):
    """Validate in-memory Arrow tables as a trace.

    Parameters
    ----------
    source : mapping of str to pyarrow.Table
        Table name -> table; absent tables are empty.
    meta : dict, optional
        ``meta.json`` content (default: minimal).

    Returns
    -------
    (dict, dict)
        ``(tables, meta)``, every table of the format conformed to its schema.
    """
    unknown = set(source) - set(TABLES)
    if unknown:
        raise TraceError(f"unknown tables: {', '.join(sorted(unknown))}")
    tables = {name: (_conform(source[name], name, name)
                     if name in source else empty_table(name))
              for name in TABLES}
    meta = dict(meta or {"format": FORMAT_NAME,
                         "format_version": FORMAT_VERSION})
    _check_meta(meta, "meta")
    return tables, meta


def frame_columns(table, name, threads, where="trace"):
    """Columns of the pandas DataFrame of table *name*: its own columns,
    plus the derived ones and ``thread_name`` (resolved with the *threads*
    DataFrame) for every table but ``threads``."""
    try:
        cols = _columns(table, name)
    except (pa.ArrowException, ValueError, TypeError) as e:
        # Validated on load; an undocumented column may still not convert.
        raise TraceError(f"{where}: table {name}: {_first_line(e)}") from None
    if name != "threads":
        cols.update(_derived(cols, name))
        cols["thread_name"] = thread_names(cols["thread"], threads)
    return cols


def meta_warnings(meta):
    """Warnings that ``meta.json`` alone gives: a run killed, aborted or
    failed, records lost."""
    out = []
    if meta.get("state") == "running":
        out.append("meta.json: state is 'running': the run was killed; "
                   "tables hold what was flushed before that")
    elif meta.get("state") == "aborted":
        out.append("meta.json: state is 'aborted': a second interrupt stopped "
                   "the run at once; tables hold what was flushed before that")
    elif meta.get("state") == "failed":
        why = failure_reason(meta)
        out.append(f"meta.json: state is 'failed' ({why}); tables hold what "
                   "was written before that")
    records = meta.get("records")
    if isinstance(records, dict):
        lost = {k: v.get("lost", 0) for k, v in records.items()
                if isinstance(v, dict) and v.get("lost")}
        if lost:
            detail = ", ".join(f"{k}: {v}" for k, v in lost.items())
            out.append(f"meta.json: {sum(lost.values())} records lost "
                       f"({detail})")
    return out


def failure_reason(meta):
    """The one-line reason a failed run gives (``failure``, else
    ``stop_reason``), or ``"no reason given"``."""
    why = meta.get("failure") or meta.get("stop_reason") or ""
    why = " ".join(str(why).split())
    return (why[:200] + "...") if len(why) > 200 else (why or "no reason given")
