"""Trace analysis for kvmscope: load, validate, replay and report on trace
directories, using only the trace format (pyarrow, pandas, numpy).

``Trace``, ``TraceError`` and ``SCHEMAS`` are imported on first use (PEP 562),
so that importing a light submodule (``kvmscope.analysis.schema``) does not
import pandas.

Examples
--------
>>> from kvmscope.analysis import Trace
>>> t = Trace.load("traces/pio-storm")        # doctest: +SKIP
>>> t.lock_stats(["lock", "callsite"])        # doctest: +SKIP
"""

from .schema import FORMAT_VERSION, TABLES

__all__ = ["Trace", "TraceError", "SCHEMAS", "TABLES", "FORMAT_VERSION", "diff", "Store",
           "request_paths", "reexecute"]


def __getattr__(name):
    # Plain imports (not importlib) so that the import graph test sees them.
    if name == "Trace":
        from .trace import Trace as value
    elif name == "TraceError":
        from .load import TraceError as value
    elif name == "Store":
        from .store import Store as value
    elif name == "SCHEMAS":
        from .schema import SCHEMAS as value
    elif name == "replay":
        # the reconstruction module (called, it re-executes); importlib, as
        # "from . import replay" would come back here before it is loaded
        import importlib
        value = importlib.import_module(__name__ + ".replay")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value         # once: later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | {"Trace", "TraceError", "SCHEMAS", "Store"})


def diff(base, new, **options):
    """Compare lock hold or wait times of two traces (or groups of runs).

    See :func:`kvmscope.analysis.regress.compare` for the parameters.
    """
    from .regress import compare
    return compare(base, new, **options)


def request_paths(trace, kind="block"):
    """Every block request (or timer tick) of *trace* followed across
    threads, stage by stage.

    See :func:`kvmscope.analysis.paths.request_paths`.
    """
    from .paths import request_paths as follow
    return follow(trace, kind)


# ---- re-execution (what if)

def reexecute(trace, policy="barging", seed=None, **changes):
    """A recorded trace re-executed under changed conditions: the predicted
    run as a Trace (``kvmscope.analysis.replay(trace, **changes)`` is the
    same call).

    See :func:`kvmscope.analysis.whatif.reexecute` for the parameters.
    """
    from .whatif import reexecute as run
    return run(trace, policy=policy, seed=seed, **changes)
