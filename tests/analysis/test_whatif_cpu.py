"""CPU sharing in re-execution (docs/whatif.md, "CPUs"): the threads of a
predicted run share the recording host's CPUs; a change that makes them
busier slows them, an unchanged re-execution is untouched."""
import json
import os

import pytest

from kvmscope.analysis import Trace, reexec_engine, whatif

from test_whatif import MIXED, ROOT, run

PIO = os.path.join(ROOT, "traces", "pio-storm-2vcpu")


@pytest.fixture(scope="module")
def pio():
    return Trace.load(PIO)


def test_the_recording_host_s_cpus_are_used(mixed):
    assert mixed.meta["host"]["cpus"] == 2
    assert reexec_engine.host_cpus(reexec_engine.model_of(mixed)) == 2


@pytest.mark.parametrize("path", [MIXED, PIO])
def test_the_recording_s_own_sharing_is_small_and_bounded(path):
    t = Trace.load(path)
    eng = reexec_engine.run(reexec_engine.model_of(t))
    threads = len(eng.vcpus) + 1 + eng.nworkers
    s = reexec_engine.cpu_stretch(eng, 2)
    # two vCPUs and a main loop that mostly sleeps on two CPUs
    assert 1.0 <= s < 1.2
    assert reexec_engine.cpu_stretch(eng, threads) == 1.0


def test_an_unchanged_re_execution_is_not_stretched(mixed):
    p = mixed.reexecute()
    assert p.meta["replay"]["cpu_stretch"] == 1.0
    assert whatif.metrics(p)["exits_per_s"] == pytest.approx(whatif.metrics(mixed)["exits_per_s"])


@pytest.mark.parametrize("fixture", ["mixed", "pio"])
def test_more_vcpus_than_cpus_share_them(request, fixture):
    t = request.getfixturevalue(fixture)
    shared = t.reexecute(vcpus=4)
    alone = t.reexecute(vcpus=4, cpus=0)
    # four vCPUs on two CPUs: each runs at about half speed where it would
    # have had a CPU of its own
    assert shared.meta["replay"]["cpu_stretch"] > 1.5
    assert alone.meta["replay"]["cpu_stretch"] == 1.0
    rec, s, a = (whatif.metrics(x)["exits_per_s"] for x in (t, shared, alone))
    assert a > 1.7 * rec
    assert s < 0.75 * a


def test_enough_cpus_change_nothing(mixed):
    many = mixed.reexecute(vcpus=4, cpus=64)
    alone = mixed.reexecute(vcpus=4, cpus=0)
    assert many.meta["replay"]["cpu_stretch"] == 1.0
    assert whatif.metrics(many) == whatif.metrics(alone)


def test_a_busier_main_loop_slows_the_vcpus(mixed):
    # 20us of busy-waiting added to every dispatch: more threads want a CPU
    shared = mixed.reexecute(add_hold={"main:dispatch": 20_000})
    alone = mixed.reexecute(add_hold={"main:dispatch": 20_000}, cpus=0)
    assert shared.meta["replay"]["cpu_stretch"] > 1.0
    assert whatif.metrics(shared)["exits_per_s"] < whatif.metrics(alone)["exits_per_s"]


def test_the_stretch_is_deterministic(mixed):
    a = mixed.reexecute(vcpus=3)
    b = mixed.reexecute(vcpus=3)
    assert a.meta["replay"]["cpu_stretch"] == b.meta["replay"]["cpu_stretch"]
    assert a.locks["acquired_ns"].tolist() == b.locks["acquired_ns"].tolist()


def test_whatif_says_when_it_stretched_and_cpus_0_turns_it_off(capsys):
    import json
    status, out, err = run(capsys, "whatif", MIXED, "--vcpus", 4)
    assert status == 0 and "busy times x1." in out.splitlines()[0] and "2 CPUs" in out
    status, out, _ = run(capsys, "whatif", MIXED, "--vcpus", 4, "--format", "json")
    shared = json.loads(out)
    status, out, _ = run(capsys, "whatif", MIXED, "--vcpus", 4, "--cpus", 0, "--format", "json")
    alone = json.loads(out)
    assert shared["cpu_stretch"] > 1.5 and alone["cpu_stretch"] == 1.0

    def rate(d):
        return next(f["predicted"] for f in d["figures"] if f["metric"] == "exits_per_s")
    assert rate(shared) < 0.75 * rate(alone)


@pytest.mark.parametrize("argv, message", [
    (["replay", MIXED, "-o", "{tmp}", "--engine", "core", "--cpus", "2"], "--cpus needs --engine model"),
    (["whatif", MIXED, "--vcpus", "4", "--cpus", "-1"], "--cpus"),
])
def test_bad_cpus_is_one_line(capsys, tmp_path, argv, message):
    status, _, err = run(capsys, *[a.replace("{tmp}", str(tmp_path / "o")) for a in argv])
    assert status == 2 and message in err and err.count("\n") == 1


def test_whatif_names_how_long_the_recorded_vcpus_waited_for_a_cpu(capsys):
    # traces/mixed-2vcpu-isr carries the kernel's accounting (stats.cpu):
    # its vCPUs waited for a CPU 18% and 21% of the time they wanted one,
    # which the whatif title says (predictions then lean on the CPU-sharing
    # estimate); a trace without the accounting says nothing of it
    isr = os.path.join(ROOT, "traces", "mixed-2vcpu-isr")
    rows = Trace.load(isr).cpu_stats().set_index("thread_name")
    waits = [rows.loc[v, "runq_pct"] for v in ("vcpu0", "vcpu1")]
    assert all(10 < w < 30 for w in waits)
    status, out, _ = run(capsys, "--no-pager", "whatif", isr, "--add-hold", "pio:blk=5us")
    assert status == 0
    assert f"the recorded vCPUs waited for a CPU {waits[0]:.0f}/{waits[1]:.0f}% of the time" \
        in out.splitlines()[0]
    status, out, _ = run(capsys, "whatif", isr, "--add-hold", "pio:blk=5us", "--format", "json")
    assert json.loads(out)["recorded_cpu_wait_pct"] == {"vcpu0": round(waits[0], 1),
                                                        "vcpu1": round(waits[1], 1)}
    status, out, _ = run(capsys, "--no-pager", "whatif", MIXED, "--add-hold", "pio:blk=5us")
    assert "waited for a CPU" not in out
