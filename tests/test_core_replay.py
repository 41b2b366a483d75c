"""``kvmscope replay --engine core``: the re-execution model's schedules run on
real threads through the compiled core (BQL, main loop, timers, bottom halves,
AIO pool), without KVM, recorded as a trace."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from kvmscope import _core, cli
from kvmscope.analysis import Trace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIXED = os.path.join(ROOT, "traces", "mixed-2vcpu")
STORM = os.path.join(ROOT, "traces", "pio-storm-2vcpu")


def run(capsys, *argv):
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def per_site(trace):
    lk = trace.arrow("locks").to_pandas()
    lk["hold"] = lk["released_ns"] - lk["acquired_ns"]
    lk["wait"] = lk["acquired_ns"] - lk["request_ns"]
    return lk.groupby("callsite", observed=True).agg(n=("hold", "size"), hold=("hold", "median"),
                                                     wait=("wait", "sum"))


def timer_acks(trace):
    """Timer acknowledgements (the ISR exits of mixed): writes to the timer device's ack port."""
    ex = trace.exits
    return int(((ex["device"] == "timerdev") & (ex["addr"] == 0x544)).sum())


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    base = tmp_path_factory.mktemp("core")
    out = {}
    for name, opts in (("plain", []), ("aio1", ["--aio-threads", "1"]), ("vcpus3", ["--vcpus", "3"]),
                       ("slow", ["--timer-period-us", "4000"])):
        assert cli.main(["replay", MIXED, "-o", str(base / name), "--engine", "core"] + opts) == 0
        out[name] = Trace.load(str(base / name))
    return out


def test_mixed_runs_the_model_schedules_with_real_causal_links(mixed, capsys):
    rec, got = Trace.load(MIXED), mixed["plain"]
    a, b = per_site(rec)["n"], per_site(got)["n"]
    # program exits take the BQL exactly as recorded; the timer device's acquisitions are
    # its 2 program exits per vCPU plus one acknowledgement per tick that really fired
    for cs in ("pio:debugport", "pio:blk", "pio:exitdev"):
        assert b[cs] == a[cs], cs
    fires = len(got.timers)
    assert fires > 0
    acks = timer_acks(got)
    # a tick that reaches a vCPU after its last guest time goes unanswered (one per vCPU
    # in practice; two allowed for a vCPU thread that lost its CPU at the end)
    assert fires - 4 <= acks <= fires
    assert b["pio:timerdev"] == (a["pio:timerdev"] - timer_acks(rec)) + acks
    # every exit recorded, as recorded, apart from the acknowledgements (one per tick)
    assert len(got.exits) - acks == len(rec.exits) - timer_acks(rec)
    assert (got.exits["entry_ns"].isna().sum()) == 2          # each vCPU's last exit
    # every request went through the pool, its eventfd, the loop and the completion BH
    assert len(got.aio) == len(rec.aio)
    assert (got.aio["complete_ns"] > got.aio["done_ns"]).all()
    assert (got.bh["name"] == "aio:complete").sum() > 0 and len(got.loop) > 0
    raises = got.irqs[got.irqs["kind"] == "raise"]
    assert sorted(raises["vector"].unique().tolist()) == [0x30, 0x31]
    assert (raises["vector"] == 0x31).sum() == len(rec.aio)
    # the whole run: measured 1.1-1.9x the recorded 189 ms on the 2-core development VM
    dur = got.end_ns - got.start_ns
    assert 0.5 * (rec.end_ns - rec.start_ns) < dur < 10 * (rec.end_ns - rec.start_ns)
    status, out, err = run(capsys, "validate", got.path)
    assert status == 0, out + err
    meta = json.load(open(os.path.join(got.path, "meta.json")))
    assert meta["replay"]["engine"] == "core" and meta["state"] == "complete"
    assert meta["replay"]["describe"] == ["no change"]
    assert not any("exits" == w or "AIO" == w for w in meta["replay"]["left_out"])


def test_every_recording_measures_the_host_s_sleeping_hand_off(mixed):
    # meta.json host.mutex_wake_ns: 200 hand-offs of a pthread mutex to a
    # thread asleep on it, sorted, each a real futex wake-up (a few us to a
    # few hundred on any host)
    host = mixed["plain"].meta["host"]
    cal = host["mutex_wake_ns"]
    assert len(cal) == 200 and cal == sorted(cal)
    assert 500 < cal[100] < 5_000_000
    # and what waking the sleeper cost the unlocking thread: a system call
    unlock = host["mutex_unlock_wake_ns"]
    assert len(unlock) == 200 and unlock == sorted(unlock)
    assert 0 < unlock[100] < 5_000_000
    with pytest.raises(ValueError, match="hold_ns"):
        _core.measure_wake_latency(10, hold_ns=10)
    with pytest.raises(ValueError, match="n in"):
        _core.measure_mutex_handoff(0)


def test_the_calibration_is_skipped_on_one_cpu():
    # pinned to one CPU the two threads would take turns by time slices:
    # the calibration gives up at once instead of costing the run a second
    code = ("import os, time; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from kvmscope import _core; t = time.monotonic(); d = _core.measure_mutex_handoff(); "
            "print(len(d['wake_ns']), len(d['unlock_ns']), time.monotonic() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    n_wake, n_unlock, took = out.stdout.split()
    assert (n_wake, n_unlock) == ("0", "0") and float(took) < 0.1


def test_two_busy_threads_on_one_cpu_wait_for_it_half_the_time(tmp_path, capsys):
    # The core replay of pio-storm runs its two vCPU threads busy; pinned to
    # one CPU they take turns, and stats.cpu says each waited for the CPU
    # about as long as it ran; the report's cpu section shows it.
    out = tmp_path / "one"
    code = ("import os, sys; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from kvmscope import cli; sys.exit(cli.main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", code, "replay", STORM, "-o", str(out), "--engine", "core"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    trace = Trace.load(str(out))
    rows = trace.cpu_stats().set_index("thread_name")
    if rows["runq_ns"].isna().all():
        pytest.skip("this kernel does not account run-queue time (/proc/thread-self/schedstat)")
    for name in ("vcpu0", "vcpu1"):
        assert rows.loc[name, "cpu_ns"] > 10_000_000
        assert 25 < rows.loc[name, "runq_pct"] < 75, rows
        assert rows.loc[name, "slices"] >= 2 and rows.loc[name, "delay_mean_ns"] > 0
    assert rows.index[-1] == "(other threads)"
    status, text, _ = run(capsys, "report", str(out), "--section", "cpu")
    assert status == 0 and "runq%" in text and "vcpu1" in text


def test_every_core_replay_accounts_its_threads_cpu(mixed):
    cpu = mixed["plain"].meta["stats"]["cpu"]
    assert {"vcpu0", "vcpu1", "main", "aio0", "aio1", "drain"} <= set(cpu["threads"])
    assert all(cpu["threads"][v]["cpu_ns"] > 1_000_000 for v in ("vcpu0", "vcpu1"))
    assert cpu["other_cpu_ns"] >= 0


def test_aio_threads_and_vcpus_change_the_real_threads(mixed):
    roles = mixed["aio1"].threads
    assert roles[roles["role"] == "aio"]["name"].tolist() == ["aio0"]
    assert len(mixed["aio1"].aio) == len(Trace.load(MIXED).aio)
    assert set(mixed["aio1"].aio["thread_name"].astype(str)) == {"aio0"}
    t3 = mixed["vcpus3"]
    assert t3.threads[t3.threads["role"] == "vcpu"]["name"].tolist() == ["vcpu0", "vcpu1", "vcpu2"]
    prog = len(mixed["plain"].exits) - timer_acks(mixed["plain"])
    prog3 = len(t3.exits) - timer_acks(t3)
    assert prog3 == pytest.approx(1.5 * prog, rel=0.01)
    # the third vCPU replays vCPU 0's stream with its own timer, requests and interrupts
    assert t3.meta["timers"] == ["timerdev:vcpu0", "timerdev:vcpu1", "timerdev:vcpu2"]
    assert len(t3.aio) == pytest.approx(1.5 * len(mixed["plain"].aio), rel=0.01)
    assert set(t3.irqs["vcpu"].unique().tolist()) == {0, 1, 2}
    assert t3.meta["replay"]["changes"] == {"vcpus": 3}


def test_a_doubled_timer_period_halves_the_ticks(mixed):
    plain, slow = mixed["plain"], mixed["slow"]
    for t, period in ((plain, 2_000_000), (slow, 4_000_000)):
        # the guests program the period; the device's grid spaces the deadlines by it
        tm = t.timers[t.timers["name"] == "timerdev:vcpu0"]
        assert np.median(np.diff(np.sort(tm["expire_ns"]))) == pytest.approx(period, rel=0.01)
    # ticks per second of run time, about half (a tick acknowledged late on a loaded
    # machine skips the next grid point, more often at the shorter period)
    rate = [len(t.timers) / (t.end_ns - t.start_ns) for t in (plain, slow)]
    assert 0.3 < rate[1] / rate[0] < 0.8      # 0.49 unloaded, 0.75 with two CPU hogs


@pytest.mark.parametrize("name", ["timer-hlt-2vcpu", "disk-io-user-irqchip"])
def test_halting_guests_replay_with_their_interrupts(tmp_path, name):
    path = os.path.join(ROOT, "traces", name)
    assert cli.main(["replay", path, "-o", str(tmp_path / "x"), "--engine", "core"]) == 0
    rec, got = Trace.load(path), Trace.load(str(tmp_path / "x"))
    # every exit the guest waited for happened after its interrupt: counts as recorded
    assert len(got.exits) == len(rec.exits)
    assert per_site(got)["n"].drop("main:dispatch").to_dict() == \
        per_site(rec)["n"].drop("main:dispatch").to_dict()
    assert len(got.timers) == len(rec.timers) and len(got.aio) == len(rec.aio)
    kinds = [got.irqs.groupby("kind", observed=True).size().to_dict(),
             rec.irqs.groupby("kind", observed=True).size().to_dict()]
    for kind in ("raise", "inject", "ack"):
        assert kinds[0].get(kind) == kinds[1].get(kind), kind


@pytest.fixture(scope="module")
def storm(tmp_path_factory):
    base = tmp_path_factory.mktemp("storm")
    plain, longer = base / "plain", base / "longer"
    assert cli.main(["replay", STORM, "-o", str(plain), "--engine", "core"]) == 0
    assert cli.main(["replay", STORM, "-o", str(longer), "--engine", "core",
                     "--add-hold", "pio:debugport=5us"]) == 0
    return plain, longer


def test_added_hold_shows_in_the_core_replay(storm):
    plain, longer = storm
    a, b = per_site(Trace.load(str(plain))), per_site(Trace.load(str(longer)))
    assert a["n"].to_dict() == per_site(Trace.load(STORM))["n"].to_dict()
    # the lock was really held 5 us longer at the changed site, and the other vCPU waited for it
    assert b.loc["pio:debugport", "hold"] >= a.loc["pio:debugport", "hold"] + 4500
    assert b["wait"].sum() > a["wait"].sum()
    meta = json.load(open(os.path.join(longer, "meta.json")))
    assert meta["replay"]["changes"] == {"add_hold": {"pio:debugport": 5000}}


def test_the_core_replay_does_not_open_dev_kvm(tmp_path):
    # watch the replaying process's open files for the whole run
    proc = subprocess.Popen([sys.executable, "-c",
                             "import sys; from kvmscope import cli; sys.exit(cli.main())",
                             "replay", STORM, "-o", str(tmp_path / "x"), "--engine", "core"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen = set()
    while proc.poll() is None:
        try:
            for fd in os.listdir(f"/proc/{proc.pid}/fd"):
                try:
                    seen.add(os.readlink(f"/proc/{proc.pid}/fd/{fd}"))
                except OSError:
                    pass
        except OSError:
            pass
        time.sleep(0.002)
    assert proc.wait() == 0, proc.stderr.read()
    assert any("anon_inode:[eventfd]" in s for s in seen)     # the main loop's, seen running
    assert not any(s == "/dev/kvm" or s.startswith("anon_inode:kvm") for s in seen)


@pytest.mark.parametrize("option, word", [(["--seed", "1"], "--seed"),
                                          (["--policy", "fifo"], "fifo"),
                                          (["--vcpus", "65"], "--vcpus"),
                                          (["--add-hold", "pio:nosuch=1us"], "pio:nosuch")])
def test_what_the_core_cannot_do_is_one_line(tmp_path, capsys, option, word):
    status, out, err = run(capsys, "replay", STORM, "-o", tmp_path / "x", "--engine", "core",
                           *option)
    assert status == 2
    assert len(err.strip().splitlines()) == 1 and word in err
    assert not (tmp_path / "x" / "meta.json").exists()


def test_an_imported_trace_replays_its_bql_acquisitions_alone(tmp_path, capsys):
    path = os.path.join(ROOT, "traces", "qemu-pio-storm-2vcpu")
    assert cli.main(["replay", path, "-o", str(tmp_path / "x"), "--engine", "core"]) == 0
    rec = Trace.load(path)
    lk = rec.locks
    want = lk[lk["lock"] == "bql"].groupby("callsite", observed=True).size().to_dict()
    got = Trace.load(str(tmp_path / "x"))
    assert per_site(got)["n"].to_dict() == want
    meta = json.load(open(os.path.join(tmp_path, "x", "meta.json")))
    assert "exits" in meta["replay"]["left_out"] and "qemu" in meta["replay"]["locks_only"]
    status, out, err = run(capsys, "replay", path, "-o", tmp_path / "y", "--engine", "core",
                           "--vcpus", "3")
    assert status == 2 and "--vcpus" in err and len(err.strip().splitlines()) == 1


def test_lockless_device_leaves_the_lock_but_keeps_its_time(tmp_path):
    from kvmscope import core_replay
    imported = Trace.load(os.path.join(ROOT, "traces", "mixed-2vcpu"))
    before = core_replay.schedules(imported)
    after = core_replay.schedules(imported, lockless=["blk"])
    for (name, _, g0, h0, _), (_, _, g1, h1, _) in zip(before, after):
        # the device's handling moves outside the lock: each thread's total time stays
        assert g1.sum() + h1.sum() == pytest.approx(g0.sum() + h0.sum(), rel=1e-9), name
    assert cli.main(["replay", MIXED, "-o", str(tmp_path / "x"), "--engine", "core",
                     "--lockless", "blk"]) == 0
    got = per_site(Trace.load(str(tmp_path / "x")))["n"].to_dict()
    want = per_site(imported)["n"].to_dict()
    assert "pio:blk" in want and "pio:blk" not in got
    assert got["pio:debugport"] == want["pio:debugport"]


def _stream(**cols):
    from kvmscope import _core
    out = np.zeros((2, len(_core.EXIT_FIELDS)), np.int64)
    out[:, _core.EXIT_FIELDS.index("wvec")] = -1
    out[:, _core.EXIT_FIELDS.index("cs")] = -1
    out[:, _core.EXIT_FIELDS.index("device")] = 0xFFFFFFFE
    for name, values in cols.items():
        out[:, _core.EXIT_FIELDS.index(name)] = values
    return out


def _model_run(prog, vectors=(0x31,)):
    from kvmscope import _core
    _core.calibrate_clock("auto", 0.01)
    return _core.ModelRun(_core.Tracer(1024, False, True), [("vcpu0", prog, {})],
                          np.zeros((0, 5), np.int64), np.zeros((0, 7), np.int64), [], [],
                          list(vectors), np.full((1, len(vectors)), -1), -1, 1, 0, 1, 0)


def test_a_schedule_that_deadlocks_is_stopped_by_the_watchdog():
    from kvmscope.errors import KvmscopeError
    # the second exit waits for an interrupt no thread raises
    run = _model_run(_stream(gate=[0, 2], gvec=[-1, 0], gcnt=[0, 1], last=[0, 1], reason=[2, 2]))
    t0 = time.monotonic()
    with pytest.raises(KvmscopeError, match="waits for interrupt 0x31 number 1"):
        run.run(0.3)
    assert time.monotonic() - t0 < 5


@pytest.mark.parametrize("cols", [dict(gate=[0, 2], gvec=[-1, 3], gcnt=[0, 1]),   # no vector 3
                                  dict(cs=[0, 40]),                               # call site
                                  dict(gate=[0, 7]),                              # gate kind
                                  dict(fx0=[0, 0], nfx=[0, 2])])                  # effects
def test_a_schedule_out_of_range_never_reaches_the_threads(cols):
    with pytest.raises(ValueError, match="out of range"):
        _model_run(_stream(**cols))
