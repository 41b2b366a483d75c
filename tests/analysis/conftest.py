"""Fixtures shared by the analysis tests."""
import os

import pytest

from kvmscope.analysis import Trace
from kvmscope.analysis.synth import write_trace

from timelines import TWO_VCPUS_EXITS, TWO_VCPUS_LOCKS, TWO_VCPUS_THREADS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def mixed():
    """The shipped recording traces/mixed-2vcpu, loaded once per module."""
    return Trace.load(os.path.join(ROOT, "traces", "mixed-2vcpu"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The two-vCPU timeline of ``timelines.py`` as a loaded trace."""
    return Trace.load(write_trace(tmp_path_factory.mktemp("tiny") / "tiny", threads=TWO_VCPUS_THREADS,
                                  exits=TWO_VCPUS_EXITS, locks=TWO_VCPUS_LOCKS))
