"""Re-execution of recorded traces (kvmscope replay / whatif, docs/whatif.md):
the shipped recordings reproduced, predicted traces every command reads,
each what-if change doing what it says, the ranking, bad input."""
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from kvmscope import config
from kvmscope.analysis import Trace, reexec_engine, whatif
from kvmscope.analysis.synth import make_lossy_trace, write_trace
from kvmscope.cli import main

from timelines import TWO_VCPUS_EXITS, TWO_VCPUS_LOCKS, TWO_VCPUS_THREADS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRACES = sorted(os.path.relpath(os.path.dirname(m), ROOT) for m in
                glob.glob(os.path.join(ROOT, "traces", "**", "meta.json"), recursive=True))
MIXED = os.path.join(ROOT, "traces", "mixed-2vcpu")
PIO = os.path.join(ROOT, "traces", "regress", "base-1")


@pytest.fixture(scope="module")
def pio():
    return Trace.load(PIO)


def run(capsys, *argv):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def _close(a, b, tol=0.10):
    return abs(b - a) <= tol * abs(a)


# --------------------------------------------------------------------------
# fidelity: an unchanged re-execution is the recording

@pytest.mark.parametrize("name", TRACES)
def test_an_unchanged_re_execution_reproduces_the_recording(name):
    t = Trace.load(os.path.join(ROOT, name))
    p = whatif.reexecute(t)
    # a trace imported from a QEMU log has no causal model: the sequence one
    imported = bool((t.meta.get("config") or {}).get("source"))
    assert p.meta["replay"]["model"] == ("sequence" if imported else "causal")
    rec, pred = whatif.metrics(t), whatif.metrics(p)
    # per call site, exactly as many acquisitions
    assert (t.locks.groupby("callsite", observed=True).size().to_dict()
            == p.locks.groupby("callsite", observed=True).size().to_dict())
    for k in ("bql_wait_ns", "contended_pct", "exits_per_s"):
        assert _close(rec[k], pred[k]), (k, rec[k], pred[k])
    if rec["requests"]:
        assert pred["requests"] == rec["requests"]
        for k in ("request_p50_ns", "request_p99_ns"):
            assert _close(rec[k], pred[k]), (k, rec[k], pred[k])
    assert p.check().empty
    assert p.meta["replay"]["changes"] == {} and p.meta["state"] == "complete"


def test_the_recorded_hand_offs_are_the_barging_lock_s(mixed):
    # barging (glibc's mutex) gives every recorded previous owner back; a
    # FIFO ticket lock gives other hand-offs and other waits
    barging = whatif.reexecute(mixed)
    fifo = whatif.reexecute(mixed, policy="fifo")
    rec = mixed.locks.sort_values("acquired_ns")
    assert (barging.locks.sort_values("acquired_ns")["prev_owner"].to_numpy()
            == rec["prev_owner"].to_numpy()).all()
    assert whatif.metrics(fifo)["bql_wait_ns"] != whatif.metrics(mixed)["bql_wait_ns"]


# --------------------------------------------------------------------------
# determinism

def test_same_trace_same_changes_same_prediction(mixed):
    ch = {"scale_hold": {"pio:blk": 0.5}, "vcpus": 3}
    a, b = whatif.reexecute(mixed, **ch), whatif.reexecute(mixed, **ch)
    for name in ("exits", "locks", "loop", "aio", "bh", "timers", "irqs", "threads"):
        assert a.arrow(name).equals(b.arrow(name)), name
    s1 = whatif.reexecute(mixed, seed=7, **ch)
    s2 = whatif.reexecute(mixed, seed=7, **ch)
    assert s1.arrow("locks").equals(s2.arrow("locks"))


# --------------------------------------------------------------------------
# the predicted trace: written, read by every command

def test_replay_writes_a_trace_every_command_reads(capsys, tmp_path):
    out = tmp_path / "pred"
    status, text, err = run(capsys, "replay", MIXED, "-o", out, "--scale-hold", "pio:blk=0.5",
                            "--lockless", "debugport")
    assert status == 0, err
    assert text.startswith(f"{out}: predicted run of {MIXED} (pio:blk hold x0.5, "
                           "debugport lockless)")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["replay"]["of"] == MIXED
    assert meta["replay"]["changes"] == {"scale_hold": {"pio:blk": 0.5},
                                         "lockless": ["debugport"]}
    assert meta["config"]["lockless"] == ["debugport"] and meta["state"] == "complete"
    t = Trace.load(out)
    assert not t.warnings
    assert "pio:debugport" not in set(t.locks["callsite"].astype(str))
    assert run(capsys, "validate", out)[0] == 0
    assert run(capsys, "report", out, "--section", "callsites")[0] == 0
    status, text, _ = run(capsys, "diff", MIXED, "--vs", out, "--format", "json")
    assert status in (0, 1) and json.loads(text)
    assert run(capsys, "path", out, "--kind", "block", "--limit", "1")[0] == 0
    assert run(capsys, "export", out, "--perfetto", tmp_path / "p.json")[0] == 0
    assert run(capsys, "plot", out, "--kind", "wait", "-o", tmp_path / "w.png")[0] == 0
    # the output directory is protected as kvmscope run's is
    status, _, err = run(capsys, "replay", MIXED, "-o", out)
    assert status == 2 and "already holds a trace: use --force" in err
    assert run(capsys, "replay", MIXED, "-o", out, "--force", "--format", "json")[0] == 0


def test_the_python_api_returns_traces(mixed):
    import kvmscope.analysis as ka
    p = ka.reexecute(MIXED, lockless=["blk"])
    assert isinstance(p, Trace) and "pio:blk" not in set(p.locks["callsite"].astype(str))
    q = mixed.reexecute(vcpus=1)
    assert list(q.threads["name"])[:2] == ["vcpu0", "main"]
    # the reconstruction module is still a module, and called, re-executes
    assert len(ka.replay.lock_intervals(mixed)) == len(mixed.locks)
    assert ka.replay(mixed, lockless=["blk"]).arrow("locks").equals(p.arrow("locks"))


def test_replay_is_callable_however_it_is_imported_first():
    code = ("from kvmscope.analysis.trace import Trace\n"
            "from kvmscope.analysis import replay\n"
            f"print(replay({MIXED!r}).num_records, callable(replay.handoffs))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == [str(Trace.load(MIXED).num_records), "True"]


# --------------------------------------------------------------------------
# the changes

def test_a_longer_critical_section_makes_the_others_wait(pio):
    base = whatif.metrics(pio)
    p = pio.reexecute(add_hold={"pio:debugport": 2000})
    m = whatif.metrics(p)
    holds = p.locks[p.locks["callsite"] == "pio:debugport"]["hold_ns"]
    rec = pio.locks[pio.locks["callsite"] == "pio:debugport"]["hold_ns"]
    assert holds.sum() == rec.sum() + 2000 * len(rec)
    assert m["bql_wait_ns"] > 10 * base["bql_wait_ns"]
    assert m["contended_pct"] > 2 * base["contended_pct"]
    assert m["exits_per_s"] < base["exits_per_s"]
    assert p.meta["config"]["inject_hold"] == {"pio:debugport": 2000.0}


def test_scaling_a_hold_scales_it_and_what_it_started(mixed):
    p = mixed.reexecute(scale_hold={"pio:blk": 0.5})
    site = p.locks[p.locks["callsite"] == "pio:blk"]["hold_ns"].sum()
    rec = mixed.locks[mixed.locks["callsite"] == "pio:blk"]["hold_ns"].sum()
    assert abs(site - rec / 2) < 0.01 * rec
    assert len(p.aio) == len(mixed.aio)
    assert whatif.metrics(p)["bql_wait_ns"] < whatif.metrics(mixed)["bql_wait_ns"]


def test_a_lockless_device_takes_no_bql_and_runs_as_long(mixed):
    p = mixed.reexecute(lockless=["blk"])
    assert "pio:blk" not in set(p.locks["callsite"].astype(str))
    blk = p.exits[p.exits["device"] == "blk"]
    assert len(blk) == (mixed.exits["device"] == "blk").sum()
    assert whatif.metrics(p)["bql_wait_ns"] < 0.5 * whatif.metrics(mixed)["bql_wait_ns"]


def test_more_vcpus_replay_the_recorded_streams_again(mixed):
    p = mixed.reexecute(vcpus=4)
    assert list(p.threads["name"]) == ["vcpu0", "vcpu1", "vcpu2", "vcpu3", "main", "aio0",
                                       "aio1", "drain"]
    per = p.exits.groupby("thread_name", observed=True).size()
    program = (mixed.exits["addr"] != 0x544).groupby(mixed.exits["thread_name"],
                                                     observed=True).sum()
    for v in range(4):        # every exit but the timer acknowledgements, per copy
        copy = per[f"vcpu{v}"] - (p.exits[(p.exits["thread_name"] == f"vcpu{v}")
                                           & (p.exits["addr"] == 0x544)].shape[0])
        assert copy == program[f"vcpu{v % 2}"]
    assert len(p.aio) == 2 * len(mixed.aio)
    assert set(p.timers["name"].astype(str)) == {f"timerdev:vcpu{v}" for v in range(4)}
    assert p.check().empty
    one = mixed.reexecute(vcpus=1)
    assert set(one.exits["thread_name"].astype(str)) == {"vcpu0"}
    assert whatif.metrics(one)["exits_per_s"] < 0.6 * whatif.metrics(mixed)["exits_per_s"]


def test_fewer_aio_threads_queue_the_requests(mixed):
    p = mixed.reexecute(aio_threads=1)
    assert set(p.aio["thread_name"].astype(str)) == {"aio0"}
    assert p.aio["queue_ns"].mean() > mixed.aio["queue_ns"].mean()


def test_a_shorter_timer_period_ticks_more_often(mixed):
    p = mixed.reexecute(timer_period_us=1000)
    steps = np.diff(p.timers[p.timers["name"] == "timerdev:vcpu0"]["expire_ns"].to_numpy())
    assert np.median(steps) == 1_000_000
    assert len(p.timers) > 1.6 * len(mixed.timers)
    writes = p.exits[(p.exits["addr"] == 0x540) & p.exits["is_write"]]["data"]
    assert set(writes) == {0, 1000}


def test_changes_combine(mixed):
    p = mixed.reexecute(lockless=["blk"], vcpus=3, aio_threads=1,
                        add_hold={"pio:debugport": 1000})
    assert p.meta["replay"]["describe"] == ["pio:debugport hold +1us", "blk lockless",
                                            "3 vCPUs", "1 AIO threads"]
    assert "pio:blk" not in set(p.locks["callsite"].astype(str))
    assert p.threads["role"].tolist().count("vcpu") == 3 and p.check().empty


def test_the_change_ranges_are_kvmscope_run_s():
    assert reexec_engine.MAX_VCPUS == config.MAX_VCPUS
    assert reexec_engine.MAX_AIO_THREADS == config.MAX_AIO_THREADS


# --------------------------------------------------------------------------
# whatif: the table, the ranking

def test_whatif_prints_the_change_against_the_recording(capsys):
    status, out, _ = run(capsys, "--no-pager", "whatif", MIXED, "--lockless", "blk")
    assert status == 0
    assert out.splitlines()[0] == f"What if blk lockless: {MIXED} re-executed (barging lock)"
    row = next(line for line in out.splitlines() if line.strip().startswith("BQL acquisitions"))
    # blk's 4,010 acquisitions go; the vCPUs' others stay (6,590), the main
    # loop's 1,738 dispatches change with the timing, a few percent
    recorded, predicted = (int(x.replace(",", "")) for x in row.split()[2:4])
    assert recorded == 12338
    assert 6590 + 0.95 * 1738 <= predicted <= 6590 + 1.05 * 1738
    assert "Per call site" in out
    status, out, _ = run(capsys, "whatif", MIXED, "--vcpus", "1", "--format", "json")
    doc = json.loads(out)
    exits = next(f for f in doc["figures"] if f["metric"] == "exits")
    assert exits["recorded"] == 10600 and exits["predicted"] < 6000
    status, out, _ = run(capsys, "whatif", MIXED, "--vcpus", "1", "--format", "markdown")
    assert out.startswith("## What if 1 vCPUs") and "| figure |" in out


def test_rank_puts_the_fix_that_buys_most_first(capsys, mixed):
    table = whatif.rank(mixed)
    assert (table.iloc[0]["callsite"], table.iloc[0]["fix"]) == ("pio:blk", "lockless")
    assert table.iloc[0]["exits_per_s_gain_pct"] > 1.0
    assert table.iloc[0]["wait_removed_pct"] > 50
    exitdev = table[table["callsite"] == "pio:exitdev"]
    assert (exitdev["exits_per_s_gain_pct"] == 0).all() and (exitdev["wait_removed_ns"] == 0).all()
    assert list(table["exits_per_s_gain_pct"]) == sorted(table["exits_per_s_gain_pct"],
                                                         reverse=True)
    status, out, _ = run(capsys, "whatif", MIXED, "--rank", "--limit", "2", "--format", "json")
    doc = json.loads(out)
    assert [(f["callsite"], f["fix"]) for f in doc["fixes"]] == \
        [(r.callsite, r.fix) for r in table.head(2).itertuples()]


# --------------------------------------------------------------------------
# bad input: one line, exit status 2

@pytest.mark.parametrize("argv, message", [
    (["--scale-hold", "pio:nope=0.5"], "unknown call site 'pio:nope'"),
    (["--scale-hold", "pio:blk"], "use CALLSITE=VALUE"),
    (["--scale-hold", "pio:blk=x"], "the factor is not a number"),
    (["--scale-hold", "pio:blk=-1"], "out of range"),
    (["--add-hold", "pio:blk=2parsecs"], "--add-hold"),
    (["--lockless", "nope"], "unknown device 'nope'; devices are"),
    (["--vcpus", "0"], "--vcpus 0 out of range"),
    (["--aio-threads", "17"], "--aio-threads 17 out of range"),
    (["--timer-period-us", "10"], "--timer-period-us 10 out of range"),
    ([], "nothing to change"),
    (["--rank", "--vcpus", "2"], "--rank tries its own changes"),
])
def test_bad_what_if_input_is_one_line(capsys, argv, message):
    status, out, err = run(capsys, "whatif", MIXED, *argv)
    assert status == 2 and out == ""
    assert len(err.splitlines()) == 1 and message in err, err


def test_a_trace_that_cannot_be_re_executed_is_one_line(capsys, tmp_path):
    # records lost at unknown times (a version-1 trace): no part is known whole
    lossy = make_lossy_trace(tmp_path / "lossy", 2000, seed=1, format_version=1)
    status, _, err = run(capsys, "replay", lossy, "-o", tmp_path / "out")
    assert status == 2 and "at unknown times" in err and len(err.splitlines()) == 1
    status, _, err = run(capsys, "replay", tmp_path / "missing", "-o", tmp_path / "out")
    assert status == 2 and len(err.splitlines()) == 1
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("x")
    status, _, err = run(capsys, "replay", MIXED, "-o", tmp_path / "full")
    assert status == 2 and "holds no kvmscope trace" in err
    assert not (tmp_path / "out").exists()


def test_a_hand_made_trace_without_a_main_loop_re_executes(tmp_path):
    t = Trace.load(write_trace(tmp_path / "t", threads=TWO_VCPUS_THREADS, exits=TWO_VCPUS_EXITS,
                               locks=TWO_VCPUS_LOCKS))
    p = t.reexecute()
    assert p.locks["acquired_ns"].tolist() == t.locks["acquired_ns"].tolist()
    slower = t.reexecute(add_hold={"vcpu:io": 1000})
    assert slower.locks["contended"].sum() >= 1 and slower.check().empty
