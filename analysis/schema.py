"""The trace format as the analysis sees it: re-exported from ``kvmscope.traceformat``.

The bottom layer of :mod:`kvmscope.analysis`: every other module takes the
format from here.  ``SCHEMAS`` and ``DICT_STRING`` (Arrow types) are built on
first access, so importing this module imports neither pyarrow nor pandas.
"""
from .. import traceformat as _format
from ..traceformat import (ADDED_IN, AIO_OPS, EXIT_REASONS, FORMAT_NAME,  # noqa: F401
                           FORMAT_VERSION, IRQ_KINDS, LAYOUTS, LOCK_FILE, MAX_RESOLUTION_NS,
                           META_FILE, RUN_STATES, TMP_SUFFIX,
                           SPANS, SUPPORTED_VERSIONS, TABLES, clock_resolution_ns, describe,
                           empty_table, is_dict_string, table_file, type_matches)


def __getattr__(name):
    """``SCHEMAS`` and ``DICT_STRING``, from the format on first access."""
    if name in ("SCHEMAS", "DICT_STRING"):
        return getattr(_format, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
