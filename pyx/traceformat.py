"""The kvmscope trace format, defined once (docs/trace-format.md).

Table schemas, the names behind every enum column, the record-type codes of the
core's trace ring and the files a trace directory owns.  The recorder
(``kvmscope.tracewriter``), the reader (``kvmscope.analysis``) and the synthetic
trace generator all import it; a test checks the compiled core's constants
against it.  Pure Python: importing it loads neither the core nor pandas.
"""

FORMAT_NAME = "kvmscope-trace"
#: 2 added the ``losses`` table (where records were dropped); version 1 traces
#: still load, with loss positions unknown.
FORMAT_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)

#: meta.json "state": "running" while recording (so a killed run keeps it),
#: then "complete" (the guest ended it), "stopped" (--duration or an interrupt),
#: "failed" (an error; "failure" says why) or "aborted" (a second interrupt:
#: the tables hold what was flushed).
RUN_STATES = ("running", "complete", "stopped", "failed", "aborted")

#: Record type codes of the core's 64-byte ring records (``KS_REC_*``).
RECORD_TYPES = {"exit": 1, "lock": 2, "bh": 3, "timer": 4, "aio": 5, "loop": 6, "irq": 7}

#: Enum columns: the index the core writes -> the name in the trace.
EXIT_REASONS = ("unknown", "exception", "io", "hypercall", "debug", "hlt", "mmio",
                "irq_window_open", "shutdown", "fail_entry", "intr", "set_tpr",
                "tpr_access", "s390_sieic", "s390_reset", "dcr", "nmi", "internal_error",
                "osi", "papr_hcall", "s390_ucontrol", "watchdog", "s390_tsch", "epr",
                "system_event")
AIO_OPS = ("none", "read", "write", "fsync")
IRQ_KINDS = ("raise", "inject", "kick", "window", "ack")

#: Table names, in the order the tables are documented.
TABLES = ("threads", "exits", "locks", "bh", "timers", "aio", "loop", "irqs", "losses")



#: Where each column of a recorded table comes from in the core's 64-byte ring
#: record (``ks_record`` in ``ks_rt.h``; slots ``b0..b2`` u8, ``h0`` i16,
#: ``w0 w1`` u32, ``q0 q1`` u64, ``t0..t3`` raw timestamps).  Per table: the
#: record type and, per column, ``(slot, names)`` where ``names`` is the
#: dictionary of a dictionary column (a name listed here, or one the recording
#: provides: devices, callsites, locks, bottom_halves, timers) or None.  The
#: core's writers (``pyx/includes/ks_records.h``) fill the slots named here, and a test
#: writes one record of each type through them and reads it back.
RECORD_LAYOUT = {
    "exits": ("exit", {
        "thread": ("thread", None), "vcpu": ("h0", None), "reason": ("b0", "exit_reasons"),
        "addr": ("q0", None), "size": ("b1", None), "is_write": ("b2", None),
        "data": ("q1", None), "count": ("w0", None), "device": ("w1", "devices"),
        "exit_ns": ("t0", None), "entry_ns": ("t1", None)}),
    "locks": ("lock", {
        "thread": ("thread", None), "lock": ("w0", "locks"), "callsite": ("w1", "callsites"),
        "request_ns": ("t0", None), "acquired_ns": ("t1", None), "released_ns": ("t2", None),
        "prev_owner": ("h0", None), "contended": ("b0", None)}),
    "bh": ("bh", {
        "thread": ("thread", None), "bh": ("w0", None), "name": ("w0", "bottom_halves"),
        "sched_thread": ("h0", None), "scheduled_ns": ("t0", None), "run_ns": ("t1", None),
        "done_ns": ("t2", None), "idle": ("b0", None)}),
    "timers": ("timer", {
        "thread": ("thread", None), "timer": ("w0", None), "name": ("w0", "timers"),
        "armed_ns": ("t0", None), "expire_ns": ("t1", None), "fire_ns": ("t2", None),
        "done_ns": ("t3", None)}),
    "aio": ("aio", {
        "thread": ("thread", None), "req": ("w0", None), "op": ("b0", "aio_ops"),
        "offset": ("q0", None), "length": ("q1", None), "result": ("w1", None),
        "submit_thread": ("h0", None), "submit_ns": ("t0", None), "start_ns": ("t1", None),
        "done_ns": ("t2", None), "complete_ns": ("t3", None)}),
    "loop": ("loop", {
        "thread": ("thread", None), "iter": ("q0", None), "timeout_ns": ("q1", None),
        "poll_enter_ns": ("t0", None), "poll_exit_ns": ("t1", None), "nready": ("w0", None),
        "dispatch_end_ns": ("t2", None)}),
    "irqs": ("irq", {
        "thread": ("thread", None), "kind": ("b0", "irq_kinds"), "line": ("w0", None),
        "vector": ("w1", None), "vcpu": ("h0", None), "ts_ns": ("t0", None)}),
}

#: Dictionaries the format itself fixes (the others come with each recording).
FIXED_NAMES = {"exit_reasons": EXIT_REASONS, "aio_ops": AIO_OPS, "irq_kinds": IRQ_KINDS}

#: Device id of an access that no device claimed (``UNASSIGNED`` in the core):
#: named "unassigned" in the trace.
DEVICE_UNASSIGNED = 0xFFFFFFFF
#: Device id of an exit that is not an access (``NOT_IO``): an empty name.
DEVICE_NOT_IO = 0xFFFFFFFE

#: Tables a version-1 trace does not have (loaded as empty).
ADDED_IN = {"losses": 2}

#: Files of a trace directory besides ``<table>.arrows``: the only files a
#: recording may replace or remove (``--force``).
META_FILE = "meta.json"
CONSOLE_FILE = "console.log"


#: Largest ``meta.json`` ``clock.resolution_ns``: one second.
MAX_RESOLUTION_NS = 10 ** 9


def clock_resolution_ns(meta):
    """The step of a trace's timestamps in ns: ``meta.json``
    ``clock.resolution_ns`` (1000 for a log of QEMU's log trace backend,
    which prints microseconds), 1 when absent.  Renderers round durations
    to it, so as to show no more precision than the data has."""
    clock = meta.get("clock") if isinstance(meta, dict) else None
    res = clock.get("resolution_ns") if isinstance(clock, dict) else None
    return res if type(res) is int and 1 <= res <= MAX_RESOLUTION_NS else 1


def table_file(name):
    """File name of table *name* inside a trace directory."""
    return name + ".arrows"


#: meta.json ``layout`` -> file name suffix of a table: the crash-safe Arrow
#: IPC streams a recording writes, and the layouts a finished trace is
#: converted to (Parquet by default; Arrow IPC files on request).
LAYOUTS = {"arrows": ".arrows", "parquet": ".parquet", "arrow": ".arrow"}
#: A recording holds a lock on this file while it runs; a killed run leaves
#: it behind.
LOCK_FILE = "recording.lock"
#: A layout file is written under its name plus this, then renamed.
TMP_SUFFIX = ".tmp"


def trace_files():
    """Every file name a trace directory owns: each table in every layout
    (and their temporary names), ``meta.json``, the console log and the
    recording's lock file."""
    tables = [t + suffix + tmp for t in TABLES for suffix in LAYOUTS.values()
              for tmp in ("", TMP_SUFFIX)]
    return tables + [META_FILE, CONSOLE_FILE, LOCK_FILE]

#: Per table, the (start, end) columns of the time span a row covers; used by
#: ``Trace.window``.  A null end (a vCPU that never re-entered) is open-ended.
SPANS = {
    "exits": ("exit_ns", "entry_ns"),
    "locks": ("request_ns", "released_ns"),
    "bh": ("scheduled_ns", "done_ns"),
    "timers": ("armed_ns", "done_ns"),
    "aio": ("submit_ns", "complete_ns"),
    "loop": ("poll_enter_ns", "dispatch_end_ns"),
    "irqs": ("ts_ns", "ts_ns"),
}


def is_dict_string(typ):
    """Whether *typ* is a dictionary-encoded string type (any index width)."""
    import pyarrow as pa
    return (pa.types.is_dictionary(typ)
            and pa.types.is_integer(typ.index_type)
            and (pa.types.is_string(typ.value_type)
                 or pa.types.is_large_string(typ.value_type)))


def type_matches(actual, expected):
    """Whether a column of type *actual* satisfies the documented *expected*.

    Dictionary-encoded string columns accept any integer index width and large
    strings; every other column must have exactly the documented type.
    """
    import pyarrow as pa
    if is_dict_string(expected):
        return is_dict_string(actual)
    if pa.types.is_string(expected):
        return pa.types.is_string(actual) or pa.types.is_large_string(actual)
    return actual.equals(expected)


def describe(typ):
    """Short human name of an Arrow type, as the format document writes it."""
    if is_dict_string(typ):
        return "dictionary<string>"
    return str(typ)


def empty_table(name):
    """An empty table with the documented schema of table *name*."""
    return _arrow_part()["SCHEMAS"][name].empty_table()


def _build_schemas():
    """The Arrow side of the format, built on first use so that importing this
    module does not import pyarrow (``kvmscope run --no-trace`` needs none)."""
    import pyarrow as pa

    #: Logical type of a dictionary-encoded string column.  Any integer index
    #: type is accepted on load; the synthetic writer uses int32 indices.
    DICT_STRING = pa.dictionary(pa.int32(), pa.string())


    def _s(*fields):
        return pa.schema([pa.field(name, typ, nullable=nullable)
                          for name, typ, nullable in fields])


    _I16, _I32, _I64 = pa.int16(), pa.int32(), pa.int64()

    #: Table name -> schema, in the order the tables are documented.
    SCHEMAS = {
        "threads": _s(
            ("thread", _I16, False), ("tid", _I32, False),
            ("name", pa.string(), False), ("role", pa.string(), False)),
        "exits": _s(
            ("thread", _I16, False), ("vcpu", _I16, False),
            ("reason", DICT_STRING, False), ("addr", pa.uint64(), False),
            ("size", pa.uint8(), False), ("is_write", pa.bool_(), False),
            ("data", pa.uint64(), False), ("count", pa.uint32(), False),
            ("device", DICT_STRING, False), ("exit_ns", _I64, False),
            ("entry_ns", _I64, True)),
        "locks": _s(
            ("thread", _I16, False), ("lock", DICT_STRING, False),
            ("callsite", DICT_STRING, False), ("request_ns", _I64, False),
            ("acquired_ns", _I64, False), ("released_ns", _I64, False),
            ("prev_owner", _I16, False), ("contended", pa.bool_(), False)),
        "bh": _s(
            ("thread", _I16, False), ("bh", _I32, False),
            ("name", DICT_STRING, False), ("sched_thread", _I16, False),
            ("scheduled_ns", _I64, False), ("run_ns", _I64, False),
            ("done_ns", _I64, False), ("idle", pa.bool_(), False)),
        "timers": _s(
            ("thread", _I16, False), ("timer", _I32, False),
            ("name", DICT_STRING, False), ("armed_ns", _I64, False),
            ("expire_ns", _I64, False), ("fire_ns", _I64, False),
            ("done_ns", _I64, False)),
        "aio": _s(
            ("thread", _I16, False), ("req", _I64, False),
            ("op", DICT_STRING, False), ("offset", _I64, False),
            ("length", _I64, False), ("result", _I64, False),
            ("submit_thread", _I16, False), ("submit_ns", _I64, False),
            ("start_ns", _I64, False), ("done_ns", _I64, False),
            ("complete_ns", _I64, False)),
        "loop": _s(
            ("thread", _I16, False), ("iter", _I64, False),
            ("timeout_ns", _I64, False), ("poll_enter_ns", _I64, False),
            ("poll_exit_ns", _I64, False), ("nready", _I32, False),
            ("dispatch_end_ns", _I64, False)),
        "irqs": _s(
            ("thread", _I16, False), ("kind", DICT_STRING, False),
            ("line", _I32, False), ("vector", _I32, False),
            ("vcpu", _I16, False), ("ts_ns", _I64, False)),
        # One row per run of records a thread's ring dropped (lossy mode): `lost`
        # records fell between that thread's records ending at `after_ns` and the
        # next one starting at `before_ns` (null: none before / data ended).
        "losses": _s(
            ("thread", _I16, False), ("lost", _I64, False),
            ("after_ns", _I64, True), ("before_ns", _I64, True)),
    }
    assert tuple(SCHEMAS) == TABLES
    return {"SCHEMAS": SCHEMAS, "DICT_STRING": DICT_STRING}


_arrow = None


def _arrow_part():
    global _arrow
    if _arrow is None:
        _arrow = _build_schemas()
    return _arrow


def __getattr__(name):
    """``SCHEMAS`` (table name -> Arrow schema) and ``DICT_STRING`` (the logical type
    of a dictionary-encoded string column) are built on first access."""
    if name in ("SCHEMAS", "DICT_STRING"):
        return _arrow_part()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
