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

import sys

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


class _ReplayModule(type(sys)):
    """``kvmscope.analysis.replay``: the reconstruction of a trace (lock
    ownership, hand-offs, thread states, the checker) as attributes, and,
    called, a re-execution: ``replay(trace, **changes)`` is
    :func:`reexecute`."""

    def __call__(self, trace, policy="barging", seed=None, **changes):
        return reexecute(trace, policy=policy, seed=seed, **changes)


class _ReplayFinder:
    """Makes the module ``kvmscope.analysis.replay`` callable as it is
    imported, whoever imports it first (a meta path finder that only wraps
    that module's loader)."""

    name = __name__ + ".replay"

    def find_spec(self, name, path, target=None):
        if name != self.name:
            return None
        import importlib.machinery
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _ReplayLoader(spec.loader)
        return spec


class _ReplayLoader:
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        module.__class__ = _ReplayModule


if not any(isinstance(f, _ReplayFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _ReplayFinder())
