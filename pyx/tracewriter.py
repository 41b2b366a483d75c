"""Streams drained trace records into the Arrow IPC stream files of a trace directory.

The format is documented in docs/trace-format.md; kvmscope.analysis reads it.
"""
import json
import os

import numpy as np
import pyarrow as pa

from .traceformat import (AIO_OPS, EXIT_REASONS, FORMAT_NAME, FORMAT_VERSION, IRQ_KINDS, META_FILE,
                          RECORD_TYPES, SCHEMAS, table_file)

FORMAT = FORMAT_NAME

NULL_NS = np.iinfo(np.int64).min

REC_EXIT, REC_LOCK, REC_BH, REC_TIMER, REC_AIO, REC_LOOP, REC_IRQ = (
    RECORD_TYPES[k] for k in ("exit", "lock", "bh", "timer", "aio", "loop", "irq"))


def _ns(col):
    """int64 Arrow array with the null marker turned into nulls."""
    col = np.ascontiguousarray(col, dtype=np.int64)
    mask = col == NULL_NS
    return pa.array(col, type=pa.int64(), mask=mask if mask.any() else None)


def _dict(indices, dictionary):
    return pa.DictionaryArray.from_arrays(pa.array(np.ascontiguousarray(indices, dtype=np.int32)),
                                          dictionary)


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

    def __init__(self, path, devices, callsites, locks=("bql",), bh_names=(), timer_names=(),
                 compression=None):
        self.path = path
        os.makedirs(path, exist_ok=True)
        self.counts = {name: 0 for name in SCHEMAS}
        self._files = {}
        self._writers = {}
        for name, schema in SCHEMAS.items():
            f = pa.OSFile(os.path.join(path, table_file(name)), "wb")
            self._files[name] = f
            self._writers[name] = pa.ipc.new_stream(
                f, schema, options=pa.ipc.IpcWriteOptions(compression=compression))
        self._reasons = pa.array(EXIT_REASONS, pa.string())
        self._reason_index = np.zeros(256, dtype=np.int32)        # unknown codes -> "unknown"
        self._reason_index[:len(EXIT_REASONS)] = np.arange(len(EXIT_REASONS))
        self._devices = pa.array(list(devices) + ["unassigned", ""], pa.string())
        self._ndevices = len(devices)
        self._callsites = pa.array(list(callsites), pa.string())
        self._locks = pa.array(list(locks), pa.string())
        self._bh_names = pa.array(list(bh_names), pa.string())
        self._timer_names = pa.array(list(timer_names), pa.string())
        self._aio_ops = pa.array(AIO_OPS, pa.string())
        self._irq_kinds = pa.array(IRQ_KINDS, pa.string())
        self._threads_written = False

    def write_threads(self, info):
        """Write the threads table once: ``info`` is a list of (thread, tid, name, role)."""
        if self._threads_written or not info:
            return
        cols = list(zip(*info))
        batch = pa.record_batch([pa.array(cols[0], pa.int16()), pa.array(cols[1], pa.int32()),
                                 pa.array(cols[2], pa.string()), pa.array(cols[3], pa.string())],
                                schema=SCHEMAS["threads"])
        self._write("threads", batch)
        self._threads_written = True

    def write_records(self, rec):
        """Split drained records by type and append them to their tables."""
        if len(rec) == 0:
            return
        types = rec["type"]
        exits = rec[types == REC_EXIT]
        if len(exits):
            self._write("exits", self._exits_batch(exits))
        for code, name, build in ((REC_LOCK, "locks", self._locks_batch), (REC_BH, "bh", self._bh_batch),
                                  (REC_TIMER, "timers", self._timers_batch), (REC_AIO, "aio", self._aio_batch),
                                  (REC_LOOP, "loop", self._loop_batch), (REC_IRQ, "irqs", self._irqs_batch)):
            sel = rec[types == code]
            if len(sel):
                self._write(name, build(sel))

    def _exits_batch(self, r):
        dev = r["w1"].astype(np.int64)
        dev_index = np.where(dev < self._ndevices, dev,
                             np.where(dev == 0xFFFFFFFF, self._ndevices, self._ndevices + 1))
        return pa.record_batch([
            pa.array(r["thread"].astype(np.int16)), pa.array(r["h0"]),
            _dict(self._reason_index[r["b0"]], self._reasons),
            pa.array(r["q0"]), pa.array(r["b1"]), pa.array(r["b2"].astype(bool)),
            pa.array(r["q1"]), pa.array(r["w0"]), _dict(dev_index, self._devices),
            _ns(r["t0"]), _ns(r["t1"]),
        ], schema=SCHEMAS["exits"])

    def _locks_batch(self, r):
        return pa.record_batch([
            pa.array(r["thread"].astype(np.int16)), _dict(r["w0"], self._locks),
            _dict(r["w1"], self._callsites), _ns(r["t0"]), _ns(r["t1"]), _ns(r["t2"]),
            pa.array(r["h0"]), pa.array(r["b0"].astype(bool)),
        ], schema=SCHEMAS["locks"])

    def _bh_batch(self, r):
        return pa.record_batch([
            pa.array(r["thread"].astype(np.int16)), pa.array(r["w0"].astype(np.int32)),
            _dict(r["w0"], self._bh_names), pa.array(r["h0"]), _ns(r["t0"]), _ns(r["t1"]),
            _ns(r["t2"]), pa.array(r["b0"].astype(bool)),
        ], schema=SCHEMAS["bh"])

    def _timers_batch(self, r):
        return pa.record_batch([
            pa.array(r["thread"].astype(np.int16)), pa.array(r["w0"].astype(np.int32)),
            _dict(r["w0"], self._timer_names), _ns(r["t0"]), _ns(r["t1"]), _ns(r["t2"]), _ns(r["t3"]),
        ], schema=SCHEMAS["timers"])

    def _aio_batch(self, r):
        return pa.record_batch([
            pa.array(r["thread"].astype(np.int16)), pa.array(r["w0"].astype(np.int64)),
            _dict(r["b0"], self._aio_ops), pa.array(r["q0"].astype(np.int64)),
            pa.array(r["q1"].astype(np.int64)), pa.array(r["w1"].view(np.int32).astype(np.int64)),
            pa.array(r["h0"]), _ns(r["t0"]), _ns(r["t1"]), _ns(r["t2"]), _ns(r["t3"]),
        ], schema=SCHEMAS["aio"])

    def _loop_batch(self, r):
        return pa.record_batch([
            pa.array(r["thread"].astype(np.int16)), pa.array(r["q0"].astype(np.int64)),
            pa.array(r["q1"].view(np.int64)), _ns(r["t0"]), _ns(r["t1"]),
            pa.array(r["w0"].astype(np.int32)), _ns(r["t2"]),
        ], schema=SCHEMAS["loop"])

    def _irqs_batch(self, r):
        return pa.record_batch([
            pa.array(r["thread"].astype(np.int16)), _dict(r["b0"], self._irq_kinds),
            pa.array(r["w0"].view(np.int32)), pa.array(r["w1"].view(np.int32)),
            pa.array(r["h0"]), _ns(r["t0"]),
        ], schema=SCHEMAS["irqs"])

    def write_losses(self, losses):
        """Append loss rows: a list of (thread, lost, after_ns, before_ns), None for unknown."""
        if not losses:
            return
        cols = list(zip(*losses))
        self._write("losses", pa.record_batch([
            pa.array(cols[0], pa.int16()), pa.array(cols[1], pa.int64()),
            pa.array(cols[2], pa.int64()), pa.array(cols[3], pa.int64())], schema=SCHEMAS["losses"]))

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
