"""Streams drained trace records into the Arrow IPC stream files of a trace directory.

The format is documented in docs/trace-format.md; kvmscope.analysis reads it.
"""
import json
import os

import numpy as np
import pyarrow as pa

from .traceformat import (DEVICE_UNASSIGNED, FIXED_NAMES, META_FILE,
                          RECORD_LAYOUT, RECORD_TYPES, SCHEMAS, table_file)

NULL_NS = np.iinfo(np.int64).min


# Arrays are built from their buffers: pyarrow's array() and record_batch()
# import pandas to inspect their argument, which costs a recording's start ~0.3 s.

def _arrow(values, typ, mask=None):
    """Arrow array of fixed-width ``typ`` from a numpy array (``mask``: True where null)."""
    n = len(values)
    if pa.types.is_boolean(typ):
        data = np.packbits(np.asarray(values, dtype=bool), bitorder="little")
    else:
        data = np.ascontiguousarray(values, dtype=typ.to_pandas_dtype())
    validity = None
    if mask is not None and mask.any():
        validity = pa.py_buffer(np.packbits(~mask, bitorder="little"))
    return pa.Array.from_buffers(typ, n, [validity, pa.py_buffer(data)])


def _strings(values):
    encoded = [v.encode("utf-8") for v in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return pa.Array.from_buffers(pa.string(), len(encoded),
                                 [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))])


def _column(values, typ):
    """Arrow array of ``typ`` from a Python sequence (None: null)."""
    values = list(values)
    if pa.types.is_string(typ):
        return _strings(values)
    mask = np.array([v is None for v in values], dtype=bool)
    return _arrow(np.array([0 if v is None else v for v in values]), typ, mask)


def _ns(col):
    """int64 Arrow array with the null marker turned into nulls."""
    col = np.ascontiguousarray(col, dtype=np.int64)
    return _arrow(col, pa.int64(), col == NULL_NS)


def _dict(indices, dictionary):
    return pa.DictionaryArray.from_arrays(_arrow(indices, pa.int32()), dictionary)


def _write_error(exc, table):
    """OSError naming the table file and the system error, on one line."""
    err = getattr(exc, "errno", None)
    text = os.strerror(err) if err else (str(exc).strip().splitlines() or ["write failed"])[-1]
    return OSError(err, f"{table_file(table)}: {text}")


def write_json_atomic(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=str)
        f.write("\n")
    os.replace(tmp, path)


class TraceWriter:
    """Writes one trace directory: a stream file per table, plus meta.json.

    ``TraceWriter.ERRORS`` are the exceptions a failed write raises.

    Parameters
    ----------
    path : str
        Trace directory (created).
    devices : list of str
        Device region names, indexed by the records' device id.
    callsites : list of str
        Call-site names, indexed by the lock records' callsite id.
    locks : list of str
        Lock names, indexed by lock id.
    """

    ERRORS = (OSError, pa.ArrowException)

    def __init__(self, path, devices, callsites, locks=("bql",), bh_names=(), timer_names=(),
                 compression=None):
        self.path = path
        os.makedirs(path, exist_ok=True)
        # Held while recording: a reader that finds the lock file but not the
        # lock knows the run was killed (kvmscope.analysis.convert).
        from .analysis.convert import take_lock
        self._lock_fd = take_lock(path)
        self.counts = {name: 0 for name in SCHEMAS}
        self._files = {}
        self._writers = {}
        for name, schema in SCHEMAS.items():
            f = pa.OSFile(os.path.join(path, table_file(name)), "wb")
            self._files[name] = f
            self._writers[name] = pa.ipc.new_stream(
                f, schema, options=pa.ipc.IpcWriteOptions(compression=compression))
        # name list -> (dictionary, index of an id outside it)
        self._dicts = {}
        for name, values in FIXED_NAMES.items():
            values = list(values) if "unknown" in values else list(values) + [""]
            self._dicts[name] = (_strings(values), values.index("unknown" if "unknown" in values else ""))
        for name, values in (("devices", list(devices) + ["unassigned"]), ("callsites", callsites),
                             ("locks", locks), ("bottom_halves", bh_names), ("timers", timer_names)):
            values = list(values) + [""]
            self._dicts[name] = (_strings(values), len(values) - 1)
        self._threads_written = False

    def write_threads(self, info):
        """Write the threads table once: ``info`` is a list of (thread, tid, name, role)."""
        if self._threads_written or not info:
            return
        cols = list(zip(*info))
        batch = pa.RecordBatch.from_arrays([_column(cols[0], pa.int16()), _column(cols[1], pa.int32()),
                                 _column(cols[2], pa.string()), _column(cols[3], pa.string())],
                                schema=SCHEMAS["threads"])
        self._write("threads", batch)
        self._threads_written = True

    def write_records(self, rec):
        """Split drained records by type and append them to their tables."""
        if len(rec) == 0:
            return
        types = rec["type"]
        for table, (rtype, _) in RECORD_LAYOUT.items():
            sel = rec[types == RECORD_TYPES[rtype]]
            if len(sel):
                self._write(table, self._batch(table, sel))

    def _batch(self, table, r):
        """One record batch of ``table`` from drained records, column by column as RECORD_LAYOUT says."""
        schema = SCHEMAS[table]
        columns = []
        for field in schema:
            slot, names = RECORD_LAYOUT[table][1][field.name]
            values = r[slot]
            if names is not None:
                columns.append(self._dict_column(names, values))
            elif field.name.endswith("_ns"):
                columns.append(_ns(values))
            elif pa.types.is_boolean(field.type):
                columns.append(_arrow(values != 0, field.type))
            else:
                if pa.types.is_signed_integer(field.type) and values.dtype.kind == "u":
                    values = values.view(values.dtype.str.replace("u", "i"))  # two's complement slot
                columns.append(_arrow(values, field.type))
        return pa.RecordBatch.from_arrays(columns, schema=schema)

    def _dict_column(self, names, values):
        dictionary, fallback = self._dicts[names]
        idx = values.astype(np.int64)
        if names == "devices":
            idx = np.where(idx == DEVICE_UNASSIGNED, len(dictionary) - 2, idx)
        idx = np.where((idx >= 0) & (idx < len(dictionary)), idx, fallback)
        return _dict(idx, dictionary)

    def write_losses(self, losses):
        """Append loss rows: a list of (thread, lost, after_ns, before_ns), None for unknown."""
        if not losses:
            return
        cols = list(zip(*losses))
        self._write("losses", pa.RecordBatch.from_arrays([
            _column(cols[0], pa.int16()), _column(cols[1], pa.int64()),
            _column(cols[2], pa.int64()), _column(cols[3], pa.int64())], schema=SCHEMAS["losses"]))

    def _write(self, name, batch):
        try:
            self._writers[name].write_batch(batch)
        except OSError as e:
            raise _write_error(e, name) from None
        self.counts[name] += batch.num_rows

    def flush(self):
        for f in self._files.values():
            f.flush()

    def close(self):
        """Close every table file (all of them, even after one failed); raise the first failure."""
        first = None
        for name, w in self._writers.items():
            for closing in (w, self._files[name]):
                try:
                    closing.close()
                except OSError as e:
                    first = first or _write_error(e, name)
        self._writers.clear()
        if first:
            raise first

    def write_meta(self, meta):
        write_json_atomic(os.path.join(self.path, META_FILE), meta)

    def finish(self, meta, convert=True):
        """After the last ``write_meta``: convert the streams to the Parquet
        layout (when *convert*) and drop the recording's lock.  Returns None
        or a one-line note (the trace then stays in the stream layout)."""
        from .analysis.convert import finish_run, release_lock
        note = finish_run(self.path, meta) if convert else None
        if self._lock_fd is not None:
            release_lock(self.path, self._lock_fd)
            self._lock_fd = None
        return note
