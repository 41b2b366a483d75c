"""The trace format as the analysis sees it: re-exported from ``kvmscope.traceformat``."""
from ..traceformat import (ADDED_IN, AIO_OPS, DICT_STRING, EXIT_REASONS, FORMAT_NAME,  # noqa: F401
                           FORMAT_VERSION, IRQ_KINDS, SCHEMAS, SPANS, SUPPORTED_VERSIONS, TABLES,
                           describe, empty_table, is_dict_string, table_file, type_matches)
