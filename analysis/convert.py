"""Trace layouts: the Arrow IPC streams a recording writes, and the Parquet
or Arrow IPC *file* layout of a finished trace, which DuckDB, polars and
pandas open directly (docs/trace-format.md, "Parquet layout").

Every write goes to a temporary name, is fsynced, then renamed, so that a
layout file either is complete or does not exist; the streams of a trace
converted in place are removed only after the new files and ``meta.json``
naming them are on disk.  Imports pyarrow only (no pandas): the recorder
calls :func:`finish_run` at the end of a run.
"""

import errno
import json
import os

from .schema import LAYOUTS, LOCK_FILE, META_FILE, TABLES, TMP_SUFFIX  # noqa: F401 (re-exported)

#: Names the command line uses for the layouts it converts to.
TARGETS = {"parquet": "parquet", "arrow-file": "arrow"}

#: Derived durations ``(name, end column, start column)`` per table, as the
#: analysis and the SQL views have them.  Layout files carry only
#: ``thread_name`` besides the format's columns; the reader drops any of
#: these it finds (they are recomputed).
DERIVED = {
    "exits": (("dur_ns", "entry_ns", "exit_ns"),),
    "locks": (("wait_ns", "acquired_ns", "request_ns"),
              ("hold_ns", "released_ns", "acquired_ns")),
    "bh": (("delay_ns", "run_ns", "scheduled_ns"), ("dur_ns", "done_ns", "run_ns")),
    "timers": (("late_ns", "fire_ns", "expire_ns"), ("dur_ns", "done_ns", "fire_ns")),
    "aio": (("queue_ns", "start_ns", "submit_ns"), ("io_ns", "done_ns", "start_ns"),
            ("completion_ns", "complete_ns", "done_ns"),
            ("total_ns", "complete_ns", "submit_ns")),
    "loop": (("poll_ns", "poll_exit_ns", "poll_enter_ns"),
             ("dispatch_ns", "dispatch_end_ns", "poll_exit_ns")),
}

# Parquet rows per row group: big enough for good compression, small enough
# that a converter holds a bounded number of rows.
ROW_GROUP = 1 << 18


def derived_names(name):
    """Columns a layout file of table *name* adds to the format's."""
    extra = [d[0] for d in DERIVED.get(name, ())]
    return extra + ([] if name == "threads" else ["thread_name"])


def table_path(path, name, layout):
    """File of table *name* in trace directory *path* for *layout*."""
    return os.path.join(path, name + LAYOUTS[layout])


# --------------------------------------------------------------------------
# columns

def _names_of(threads):
    """(thread ids, names) of a threads table, for :func:`enrich`."""
    import pyarrow as pa
    if threads is None or not threads.num_rows:
        return pa.array([], pa.int16()), pa.array([], pa.string())
    return threads.column("thread").combine_chunks(), threads.column("name").combine_chunks()


def enrich(table, name, threads, durations=True):
    """*table* with ``thread_name`` and (*durations*) the derived duration
    columns.

    Parameters
    ----------
    table : pyarrow.Table or pyarrow.RecordBatch
        A table of the format (*name*).
    name : str
    threads : pyarrow.Table
        The trace's threads table; an id missing from it is named
        ``thread <id>``, as the analysis names it.

    Returns
    -------
    pyarrow.Table
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    drop = [c for c in derived_names(name) if c in table.column_names]
    table = table.drop_columns(drop)
    for col, end, start in DERIVED.get(name, ()) if durations else ():
        table = table.append_column(col, pc.subtract(table.column(end), table.column(start)))
    if name != "threads":
        ids, names = _names_of(threads)
        thread = table.column("thread")
        idx = pc.index_in(thread, value_set=ids)
        named = pc.take(names, idx) if len(ids) else pa.nulls(len(thread), pa.string())
        unknown = pc.binary_join_element_wise(
            "thread ", pc.cast(thread, pa.string()), "")
        filled = pc.coalesce(named, unknown)
        table = table.append_column("thread_name", pc.dictionary_encode(filled))
    return table


# --------------------------------------------------------------------------
# durable files

def fsync_dir(path):
    """fsync a directory, so that a rename in it is on disk."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_durable(path, obj):
    """Write JSON to a temporary name, fsync, rename over *path*."""
    tmp = path + TMP_SUFFIX
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, default=str)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class _TableWriter:
    """Writes one table file of a layout under a temporary name; ``close``
    fsyncs and renames it into place."""

    def __init__(self, final, layout, schema, compression):
        import pyarrow as pa
        import pyarrow.ipc as ipc
        import pyarrow.parquet as pq
        self.final, self.tmp = final, final + TMP_SUFFIX
        self._pending, self._rows = [], 0
        if layout == "parquet":
            dicts = [f.name for f in schema if pa.types.is_dictionary(f.type)]
            # Timestamps are nearly sorted: delta encoding, then zstd.
            delta = {f.name: "DELTA_BINARY_PACKED" for f in schema
                     if pa.types.is_integer(f.type) and not pa.types.is_dictionary(f.type)
                     and f.name.endswith("_ns")}
            self._writer = pq.ParquetWriter(
                self.tmp, schema, compression=compression or "none",
                use_dictionary=dicts, column_encoding=delta or None,
                write_statistics=True)
            self._parquet = True
        else:
            self._sink = pa.OSFile(self.tmp, "wb")
            self._writer = ipc.new_file(self._sink, schema, options=ipc.IpcWriteOptions(
                compression=compression, unify_dictionaries=True))
            self._parquet = False

    def write(self, table):
        if not self._parquet:
            self._writer.write_table(table)
            return
        self._pending.append(table)
        self._rows += table.num_rows
        if self._rows >= ROW_GROUP:
            self._flush()

    def _flush(self):
        import pyarrow as pa
        if self._pending:
            merged = pa.concat_tables(self._pending).unify_dictionaries().combine_chunks()
            self._writer.write_table(merged, row_group_size=ROW_GROUP)
        self._pending, self._rows = [], 0

    def close(self):
        if self._parquet:
            self._flush()
        self._writer.close()
        if not self._parquet:
            self._sink.close()
        _fsync_file(self.tmp)
        os.replace(self.tmp, self.final)

    def abandon(self):
        for closing in (self._writer, getattr(self, "_sink", None)):
            try:
                if closing is not None:
                    closing.close()
            except Exception:       # noqa: BLE001 - already failing; the tmp goes
                pass
        remove_quietly(self.tmp)


def remove_quietly(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _compression(layout, compression):
    if compression == "default":
        return "zstd" if layout == "parquet" else "zstd"
    return None if compression in (None, "none") else compression


def _write_tables(out, layout, batches_of, threads, compression):
    """Write every table of the format into *out* under temporary names and
    rename each into place; ``batches_of(name)`` yields its tables."""
    from .schema import SCHEMAS
    written = {}
    for name in TABLES:
        # thread names, not durations: a subtraction away, and 30% of the size
        schema = enrich(SCHEMAS[name].empty_table(), name, threads, durations=False).schema
        w = _TableWriter(table_path(out, name, layout), layout, schema,
                         _compression(layout, compression))
        rows = 0
        try:
            for part in batches_of(name):
                t = enrich(part, name, threads, durations=False).cast(schema)
                rows += t.num_rows
                w.write(t)
            w.close()
        except BaseException:
            w.abandon()
            raise
        written[name] = rows
    return written


def write_layout(out, tables, meta, layout="parquet", compression="default",
                 warnings=(), cut=None, console=None):
    """Write a trace (Arrow tables and meta.json) into directory *out* in
    the Parquet or Arrow IPC file layout.

    Parameters
    ----------
    out : str
        Directory: created, or an empty one.
    tables : dict of str to pyarrow.Table
        Every table of the format.
    meta : dict
        The trace's ``meta.json``; written with ``layout`` set.
    layout : {"parquet", "arrow"}
    compression : str
        ``"default"`` (zstd), ``"none"``, ``"zstd"``, ``"lz4"``
        (``"snappy"`` or ``"gzip"`` for Parquet).
    warnings, cut :
        What the reader found wrong with the source (a table cut short):
        kept in ``meta.json`` so that the converted trace says the same.
    console : str, optional
        ``console.log`` to copy.

    Returns
    -------
    dict
        Rows written per table.
    """
    if layout not in ("parquet", "arrow"):
        raise ValueError(f"unknown layout {layout!r}; one of parquet, arrow")
    out = os.fspath(out)
    os.makedirs(out, exist_ok=True)
    if os.listdir(out):
        raise FileExistsError(errno.EEXIST, "directory is not empty", out)
    threads = tables["threads"]
    written = _write_tables(out, layout, lambda n: [tables[n]], threads, compression)
    meta = _layout_meta(meta, layout, warnings, cut)
    if console and os.path.isfile(console):
        with open(console, "rb") as src, open(os.path.join(out, "console.log"), "wb") as dst:
            dst.write(src.read())
    write_json_durable(os.path.join(out, META_FILE), meta)
    fsync_dir(out)
    return written


def _layout_meta(meta, layout, warnings, cut):
    meta = dict(meta)
    meta["layout"] = layout
    converted = {}
    if warnings:
        converted["warnings"] = [str(w) for w in warnings]
    if cut:
        converted["cut"] = {str(k): str(v) for k, v in cut.items()}
    if converted:
        meta["converted"] = converted
    else:
        meta.pop("converted", None)
    return meta


# --------------------------------------------------------------------------
# in place: at the end of a run, and on first load of a killed one

def _stream_batches(path, name):
    """Tables of about ROW_GROUP rows from the stream file of *name*."""
    import pyarrow as pa
    import pyarrow.ipc as ipc
    fname = table_path(path, name, "arrows")
    if not os.path.exists(fname) or os.path.getsize(fname) == 0:
        return
    # Read, not memory-mapped: the converter's memory stays one row group,
    # however long the stream (mapped pages of the whole file would count).
    with pa.OSFile(fname) as source:
        reader = ipc.open_stream(source)
        pending, rows = [], 0
        for batch in reader:
            pending.append(batch)
            rows += batch.num_rows
            if rows >= ROW_GROUP:
                yield pa.Table.from_batches(pending, schema=reader.schema)
                pending, rows = [], 0
        if pending:
            yield pa.Table.from_batches(pending, schema=reader.schema)


def convert_in_place(path, tables=None, meta=None, warnings=(), cut=None,
                     compression="default"):
    """Convert a stream-layout trace in *path* into the Parquet layout.

    The Parquet files are written under temporary names, fsynced and
    renamed; then ``meta.json`` (``"layout": "parquet"``) is replaced the
    same way; only then are the stream files removed.  A crash at any point
    leaves a readable trace: before ``meta.json`` names the Parquet layout,
    readers use the streams.

    Parameters
    ----------
    path : str
        The trace directory.
    tables : dict of str to pyarrow.Table, optional
        The tables already read and validated (a killed run's, on first
        load); default: read the streams batch by batch (a run that just
        ended well).
    meta : dict, optional
        ``meta.json``; default: read from *path*.
    warnings, cut :
        What the reader found (kept in ``meta.json``).

    Raises
    ------
    OSError, pyarrow.ArrowException
        A file could not be written; the trace is left in the stream layout.
    """
    path = os.fspath(path)
    if meta is None:
        with open(os.path.join(path, META_FILE), encoding="utf-8") as f:
            meta = json.load(f)
    if tables is not None:
        threads = tables["threads"]
        batches_of = lambda n: [tables[n]]          # noqa: E731
    else:
        import pyarrow as pa
        parts = list(_stream_batches(path, "threads"))
        threads = pa.concat_tables(parts) if parts else None
        batches_of = lambda n: _stream_batches(path, n)  # noqa: E731
    _write_tables(path, "parquet", batches_of, threads, compression)
    fsync_dir(path)
    write_json_durable(os.path.join(path, META_FILE), _layout_meta(meta, "parquet", warnings, cut))
    fsync_dir(path)
    for name in TABLES:
        remove_quietly(table_path(path, name, "arrows"))
    fsync_dir(path)


def take_lock(path):
    """Create and lock :data:`LOCK_FILE` in trace directory *path*: held by
    a recording while it runs.  Returns the file descriptor."""
    import fcntl
    fd = os.open(os.path.join(path, LOCK_FILE),
                 os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def release_lock(path, fd):
    """Remove :data:`LOCK_FILE` and release the lock (the run is over)."""
    remove_quietly(os.path.join(path, LOCK_FILE))
    os.close(fd)


def is_killed_recording(path):
    """Whether *path* holds a recording that ended without finishing: its
    lock file is there and no process holds the lock (a recording that is
    still running holds it; the kernel releases it when the process dies).
    """
    import fcntl
    lock = os.path.join(path, LOCK_FILE)
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                     | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def finish_run(path, meta):
    """End of a recording: convert its streams to the Parquet layout and
    drop the lock file.  Returns None, or a one-line reason the trace stays
    in the stream layout (it is complete and readable either way)."""
    try:
        convert_in_place(path, meta=meta)
    except (OSError, ImportError) as e:
        _remove_tmp(path)
        return f"kept as Arrow streams: Parquet conversion failed: {_one_line(e)}"
    except Exception as e:          # noqa: BLE001 - pyarrow errors; the streams stay valid
        _remove_tmp(path)
        return f"kept as Arrow streams: Parquet conversion failed: {_one_line(e)}"
    return None


def convert_killed(path, tables, meta, warnings, cut):
    """On first load of a killed recording: convert it in place and remove
    its lock file; False (streams kept) when the directory cannot be
    written."""
    try:
        convert_in_place(path, tables=tables, meta=meta, warnings=warnings, cut=cut)
        remove_quietly(os.path.join(path, LOCK_FILE))
        return True
    except Exception:               # noqa: BLE001 - read-only, full: stay as streams
        _remove_tmp(path)
        return False


def _remove_tmp(path):
    for name in TABLES:
        for layout in ("parquet", "arrow"):
            try:
                remove_quietly(table_path(path, name, layout) + TMP_SUFFIX)
            except OSError:
                pass


def _one_line(e):
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    text = str(e).strip().splitlines()
    return text[-1] if text else type(e).__name__
