"""Streams drained trace records into the Arrow IPC stream files of a trace directory.

The format is documented in docs/trace-format.md; kvmscope.analysis reads it.
"""
import json
import os

import numpy as np
import pyarrow as pa

FORMAT = "kvmscope-trace"
FORMAT_VERSION = 1
NULL_NS = np.iinfo(np.int64).min

REC_EXIT = 1
REC_LOCK = 2
REC_BH = 3
REC_TIMER = 4
REC_AIO = 5
REC_LOOP = 6
REC_IRQ = 7
AIO_OPS = ["none", "read", "write", "fsync"]
IRQ_KINDS = ["raise", "lower", "inject", "kick", "window", "ack"]

EXIT_REASONS = ["unknown", "exception", "io", "hypercall", "debug", "hlt", "mmio",
                "irq_window_open", "shutdown", "fail_entry", "intr", "set_tpr",
                "tpr_access", "s390_sieic", "s390_reset", "dcr", "nmi", "internal_error",
                "osi", "papr_hcall", "s390_ucontrol", "watchdog", "s390_tsch", "epr",
                "system_event"]

_DICT = pa.dictionary(pa.int32(), pa.string())

SCHEMAS = {
    "threads": pa.schema([("thread", pa.int16()), ("tid", pa.int32()),
                          ("name", pa.string()), ("role", pa.string())]),
    "exits": pa.schema([("thread", pa.int16()), ("vcpu", pa.int16()), ("reason", _DICT),
                        ("addr", pa.uint64()), ("size", pa.uint8()), ("is_write", pa.bool_()),
                        ("data", pa.uint64()), ("count", pa.uint32()), ("device", _DICT),
                        ("exit_ns", pa.int64()), ("entry_ns", pa.int64())]),
    "locks": pa.schema([("thread", pa.int16()), ("lock", _DICT), ("callsite", _DICT),
                        ("request_ns", pa.int64()), ("acquired_ns", pa.int64()),
                        ("released_ns", pa.int64()), ("prev_owner", pa.int16()),
                        ("contended", pa.bool_())]),
    "bh": pa.schema([("thread", pa.int16()), ("bh", pa.int32()), ("name", _DICT),
                     ("sched_thread", pa.int16()), ("scheduled_ns", pa.int64()),
                     ("run_ns", pa.int64()), ("done_ns", pa.int64()), ("idle", pa.bool_())]),
    "timers": pa.schema([("thread", pa.int16()), ("timer", pa.int32()), ("name", _DICT),
                         ("armed_ns", pa.int64()), ("expire_ns", pa.int64()),
                         ("fire_ns", pa.int64()), ("done_ns", pa.int64())]),
    "aio": pa.schema([("thread", pa.int16()), ("req", pa.int64()), ("op", _DICT),
                      ("offset", pa.int64()), ("length", pa.int64()), ("result", pa.int64()),
                      ("submit_thread", pa.int16()), ("submit_ns", pa.int64()),
                      ("start_ns", pa.int64()), ("done_ns", pa.int64()), ("complete_ns", pa.int64())]),
    "loop": pa.schema([("thread", pa.int16()), ("iter", pa.int64()), ("timeout_ns", pa.int64()),
                       ("poll_enter_ns", pa.int64()), ("poll_exit_ns", pa.int64()),
                       ("nready", pa.int32()), ("dispatch_end_ns", pa.int64())]),
    "irqs": pa.schema([("thread", pa.int16()), ("kind", _DICT), ("line", pa.int32()),
                       ("vector", pa.int32()), ("vcpu", pa.int16()), ("ts_ns", pa.int64())]),
}


def _ns(col):
    """int64 Arrow array with the null marker turned into nulls."""
    col = np.ascontiguousarray(col, dtype=np.int64)
    mask = col == NULL_NS
    return pa.array(col, type=pa.int64(), mask=mask if mask.any() else None)


def _dict(indices, dictionary):
    return pa.DictionaryArray.from_arrays(pa.array(np.ascontiguousarray(indices, dtype=np.int32)),
                                          dictionary)


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
            f = pa.OSFile(os.path.join(path, name + ".arrows"), "wb")
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

    def _write(self, name, batch):
        self._writers[name].write_batch(batch)
        self.counts[name] += batch.num_rows

    def flush(self):
        for f in self._files.values():
            f.flush()

    def close(self):
        for name, w in self._writers.items():
            w.close()
            self._files[name].close()
        self._writers.clear()

    def write_meta(self, meta):
        write_json_atomic(os.path.join(self.path, "meta.json"), meta)
