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


def test_the_plan_is_what_the_re_execution_runs(model):
    # what `replay --engine core` takes from the model engine: three vCPUs
    # (the third runs vcpu0's stream again), each arming its own copy of its
    # stream's timers, the worker count asked for, the changes applied
    p = reexec_engine.plan(model, reexec_engine.Changes(vcpus=3, aio_threads=2,
                                                        add_hold={"pio:blk": 1000}))
    assert [v.name for v in p.vcpus] == ["vcpu0", "vcpu1", "vcpu2"]
    assert p.vcpus[2].stream.src is model.vcpus[0]
    assert p.workers == 2
    for i, v in enumerate(p.vcpus):
        assert all(p.timers[gi].vcpu == i for gi in v.timers.values())
    assert len(p.timers) == sum(len(v.timers) for v in p.vcpus)
    blk = model.callsites.index("pio:blk")
    S, R = p.vcpus[0].stream.prog, model.vcpus[0].prog
    changed = [k for k, cs in enumerate(R.cs) if cs == blk]
    assert changed and all(S.hold[k] == R.hold[k] + 1000 for k in changed)
    # an interrupt the recording raised has its line; one it did not, -1
    raised = model.irq_rows[model.irq_rows["kind"] == "raise"]
    vec = int(raised["vector"].iloc[0])
    assert p.irq_line(0, vec) >= 0 and p.irq_line(0, 255) == -1
    with pytest.raises(ConfigError, match="no-such"):
        reexec_engine.plan(model, reexec_engine.Changes(lockless=["no-such"]))


def test_an_interrupt_raised_during_another_isr_is_taken_when_it_ends():
    # traces/mixed-2vcpu-isr: the interrupt vCPU 0's program waits for
    # (vector 0x31) comes while the vCPU, not yet back in the guest, has
    # the service routine of vector 0x30 to run at its re-entry; the vCPU
    # must take it when the routine ends and go on (a re-execution that
    # re-ran the vCPU's entry there dropped the routine's exit and left the
    # vCPU in it, halted after 189 of its 3,988 exits)
    trace = Trace.load(os.path.join(ROOT, "traces", "mixed-2vcpu-isr"))
    eng = reexec_engine.run(reexec_engine.model_of(trace))
    assert all(v.done_t is not None and not v.in_isr for v in eng.vcpus)
    got = reexec_engine.tables(eng)["exits"].column("vcpu").to_pylist()
    assert [got.count(v) for v in (0, 1)] == [int((trace.exits["vcpu"] == v).sum()) for v in (0, 1)]
    # so the changes that need the causal model are not refused
    four = trace.reexecute(vcpus=4)
    assert four.meta["replay"]["model"] == "causal" and four.exits["vcpu"].nunique() == 4
