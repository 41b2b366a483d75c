"""The re-execution engine always ends: a vCPU stream that runs out of
exits without a last one (a recording cut while its vCPU ran) ends there,
and a model that would run forever stops with one line."""
import os

import pytest

from kvmscope.analysis import Trace, reexec_engine, reexec_model
from kvmscope.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MIXED = os.path.join(ROOT, "traces", "mixed-2vcpu")


@pytest.fixture()
def model():
    return reexec_model.build(Trace.load(MIXED))


def test_a_stream_without_a_last_exit_ends_after_its_exits(model):
    n = [len(v.prog.row) for v in model.vcpus]
    for v in model.vcpus:
        v.prog.last[-1] = False         # the vCPU re-entered the guest, then the data ends
    eng = reexec_engine.run(model)
    assert eng.n_done == len(model.vcpus)
    assert eng.m_end is not None        # the main loop was stopped
    for i, v in enumerate(eng.vcpus):
        assert v.done_t is not None
        assert sum(1 for x in eng.ex_vc if x == i) >= n[i]


def test_a_run_that_cannot_end_stops_with_one_line(model, monkeypatch):
    # the bound made small enough for this trace's 48k events to pass it
    monkeypatch.setattr(reexec_engine, "MAX_EVENTS_PER_EXIT", 0)
    monkeypatch.setattr(reexec_engine, "MIN_EVENTS", 10_000)
    with pytest.raises(ConfigError, match=r"did not end after [\d,]+ events") as e:
        reexec_engine.run(model)
    assert "\n" not in str(e.value)
