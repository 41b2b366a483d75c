"""The kvmscope trace format, defined once (docs/trace-format.md).

Table schemas, the names behind every enum column, the record-type codes of the
core's trace ring and the files a trace directory owns.  The recorder
(``kvmscope.tracewriter``), the reader (``kvmscope.analysis``) and the synthetic
trace generator all import it; a test checks the compiled core's constants
against it.  Pure Python: importing it loads neither the core nor pandas.
"""

import pyarrow as pa

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
IRQ_KINDS = ("raise", "lower", "inject", "kick", "window", "ack")

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

TABLES = tuple(SCHEMAS)

#: Tables a version-1 trace does not have (loaded as empty).
ADDED_IN = {"losses": 2}

#: Files of a trace directory besides ``<table>.arrows``: the only files a
#: recording may replace or remove (``--force``).
META_FILE = "meta.json"
CONSOLE_FILE = "console.log"


def table_file(name):
    """File name of table *name* inside a trace directory."""
    return name + ".arrows"


def trace_files():
    """Every file name a trace directory owns."""
    return [table_file(t) for t in TABLES] + [META_FILE, CONSOLE_FILE]

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
    return (pa.types.is_dictionary(typ)
            and pa.types.is_integer(typ.index_type)
            and (pa.types.is_string(typ.value_type)
                 or pa.types.is_large_string(typ.value_type)))


def type_matches(actual, expected):
    """Whether a column of type *actual* satisfies the documented *expected*.

    Dictionary-encoded string columns accept any integer index width and large
    strings; every other column must have exactly the documented type.
    """
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
    return SCHEMAS[name].empty_table()
