"""Trace analysis for kvmscope: load, validate, replay and report on trace
directories, using only the trace format (pyarrow, pandas, numpy).

Examples
--------
>>> from kvmscope.analysis import Trace
>>> t = Trace.load("traces/pio-storm")        # doctest: +SKIP
>>> t.lock_stats(["lock", "callsite"])        # doctest: +SKIP
"""

from .schema import FORMAT_VERSION, SCHEMAS, TABLES
from .trace import Trace, TraceError

__all__ = ["Trace", "TraceError", "SCHEMAS", "TABLES", "FORMAT_VERSION", "diff"]


def diff(base, new, **options):
    """Compare lock hold or wait times of two traces (or groups of runs).

    See :func:`kvmscope.analysis.regress.compare` for the parameters.
    """
    from .regress import compare
    return compare(base, new, **options)
