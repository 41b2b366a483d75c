"""Replay (ownership, waits, hand-offs, states, queues) and the invariant
checker, on hand-made traces whose answers are worked out below."""

import numpy as np
import pandas as pd
import pytest

from kvmscope.analysis import Trace
from kvmscope.analysis.replay import VIOLATIONS
from kvmscope.analysis.synth import make_trace, write_trace

# vcpu0 holds [0,100]; main waits [50,120] and holds [120,150]; vcpu0 waits
# [130,160] and holds [160,200], then again [300,310] uncontended; main
# takes it at 320 without waiting (timelines.py).
from timelines import VCPU_MAIN_LOCKS as LOCKS
from timelines import VCPU_MAIN_THREADS as THREADS


def load(tmp_path, name="t", threads=THREADS, **tables):
    return Trace.load(write_trace(tmp_path / name, threads=threads, **tables))


@pytest.fixture
def locks_trace(tmp_path):
    return load(tmp_path, locks=LOCKS)


def test_lock_intervals_and_waits(locks_trace):
    own = locks_trace.lock_intervals("bql")
    assert own["acquired_ns"].tolist() == [0, 120, 160, 300, 320]
    assert own["thread_name"].tolist() == ["vcpu0", "main", "vcpu0", "vcpu0",
                                           "main"]
    waits = locks_trace.lock_waits()
    assert waits[["thread", "start_ns", "end_ns", "wait_ns"]].values.tolist() \
        == [[2, 50, 120, 70], [1, 130, 160, 30]]


def test_handoffs(locks_trace):
    ho = locks_trace.handoffs()
    assert ho["from_name"].tolist() == ["vcpu0", "main", "vcpu0"]
    assert ho["to_name"].tolist() == ["main", "vcpu0", "main"]
    assert ho["released_ns"].tolist() == [100, 150, 310]
    assert ho["latency_ns"].tolist() == [20, 10, 10]
    assert ho["waiting"].tolist() == [True, True, False]
    # The replayed hand-offs are the rows the prev_owner column marks.
    assert ho["row"].tolist() == \
        np.flatnonzero(locks_trace.locks["handoff"]).tolist()


def test_thread_states_with_exits(tmp_path):
    t = load(tmp_path, meta={"end_ns": 250},
             exits={"thread": [1, 1, 1], "exit_ns": [10, 100, 200],
                    "entry_ns": pd.array([60, 150, None], dtype="Int64")},
             locks={"thread": [1], "request_ns": [15], "acquired_ns": [20],
                    "released_ns": [40]})
    st = t.thread_states(["vcpu0"])
    assert st[["state", "start_ns", "end_ns"]].astype(
        {"state": str}).values.tolist() == [
        ["exit", 10, 15], ["wait_lock", 15, 20], ["hold_lock", 20, 40],
        ["exit", 40, 60], ["in_guest", 60, 100], ["exit", 100, 150],
        ["in_guest", 150, 200], ["exit", 200, 250]]
    assert st["dur_ns"].sum() == 240


def test_thread_states_gaps_are_idle_and_nesting_picks_specific(tmp_path):
    t = load(tmp_path, locks=LOCKS.head(2),
             loop={"thread": [2], "poll_enter_ns": [10], "poll_exit_ns": [40],
                   "dispatch_end_ns": [150]},
             bh={"thread": [2], "scheduled_ns": [0], "run_ns": [125],
                 "done_ns": [135]})
    main = t.thread_states(["main"])
    assert main[["state", "start_ns", "end_ns"]].astype(
        {"state": str}).values.tolist() == [
        ["poll", 10, 40], ["dispatch", 40, 50], ["wait_lock", 50, 120],
        ["hold_lock", 120, 125], ["bh", 125, 135], ["hold_lock", 135, 150]]
    vcpu = t.thread_states(["vcpu0"])
    assert vcpu["state"].astype(str).tolist() == ["hold_lock"]


def test_queue_depths(tmp_path):
    t = load(tmp_path,
             aio={"thread": [1, 1, 1], "submit_ns": [0, 5, 30],
                  "start_ns": [10, 20, 40], "done_ns": [11, 21, 41],
                  "complete_ns": [12, 22, 42]},
             bh={"thread": [2, 2], "scheduled_ns": [0, 10], "run_ns": [10, 15],
                 "done_ns": [11, 16]})
    q = t.queue_depth("aio")
    assert q.values.tolist() == [[0, 1], [5, 2], [10, 1], [20, 0], [30, 1],
                                 [40, 0]]
    assert t.queue_depth("bh").values.tolist() == [[0, 1], [10, 1], [15, 0]]
    assert t.queue_depth("aio_inflight")["depth"].max() == 2
    with pytest.raises(ValueError, match="unknown queue"):
        t.queue_depth("nope")


# --------------------------------------------------------------------------
# checker

def kinds(trace):
    return sorted(set(trace.check()["kind"]))


def test_clean_traces_have_no_violations(locks_trace, tmp_path):
    assert locks_trace.check().empty
    assert list(locks_trace.check().columns) == \
        ["kind", "table", "row", "thread", "ts_ns", "detail"]
    gen = Trace.load(make_trace(tmp_path / "g", 3000, threads=4, seed=3))
    assert gen.check().empty


def test_overlapping_owners(tmp_path):
    t = load(tmp_path, locks={"thread": [1, 2], "request_ns": [0, 50],
                              "acquired_ns": [0, 50],
                              "released_ns": [100, 150]})
    v = t.check()
    assert v["kind"].tolist() == ["lock_overlap"]
    assert v.loc[0, "row"] == 1 and v.loc[0, "thread"] == 2
    assert v.loc[0, "detail"] == \
        "'bql' acquired at 50 while thread 1 held it until 100"


def test_overlap_with_any_earlier_owner_not_just_the_previous(tmp_path):
    # Thread 1 holds [0,500]; thread 2 [100,200] and thread 1 again at 300.
    t = load(tmp_path, locks={"thread": [1, 2, 2], "request_ns": [0, 100, 300],
                              "acquired_ns": [0, 100, 300],
                              "released_ns": [500, 200, 400]})
    v = t.check()
    assert v[v.kind == "lock_overlap"]["row"].tolist() == [1, 2]


def test_stage_order_of_lock_rows(tmp_path):
    t = load(tmp_path, locks={"thread": [1, 2], "request_ns": [10, 100],
                              "acquired_ns": [5, 120],
                              "released_ns": [20, 110]})
    v = t.check()
    assert sorted(v["kind"]) == ["lock_acquired_before_request",
                                 "lock_released_before_acquired"]
    assert "acquired_ns 5 < request_ns 10" in v["detail"].tolist()
    assert "released_ns 110 < acquired_ns 120" in v["detail"].tolist()


def test_prev_owner_checks(tmp_path):
    t = load(tmp_path, locks={"thread": [1, 2, 1], "request_ns": [0, 10, 20],
                              "acquired_ns": [0, 10, 20],
                              "released_ns": [5, 15, 25],
                              "prev_owner": [2, 1, 1]})
    v = t.check()
    assert v["kind"].tolist() == ["release_without_acquire",
                                  "prev_owner_mismatch"]
    assert v["row"].tolist() == [0, 2]
    assert v.loc[1, "detail"] == "prev_owner 1 on 'bql'; replay says 2"
    # A window cannot know the owner before it: no such check there.
    assert t.window(10, None).check().empty


def test_thread_going_back_in_time_or_in_two_places(tmp_path):
    t = load(tmp_path, locks={
        "thread": [1, 1], "request_ns": [200, 0], "acquired_ns": [200, 0],
        "released_ns": [210, 10]})
    assert kinds(t) == ["thread_time_backwards"]
    t = load(tmp_path, "u", locks={
        "thread": [1, 1], "lock": ["a", "b"], "request_ns": [0, 10],
        "acquired_ns": [50, 60], "released_ns": [55, 70]})
    assert kinds(t) == ["thread_overlap"]


def test_exit_checks(tmp_path):
    t = load(tmp_path, exits={
        "thread": [1, 1, 1, 2],
        "exit_ns": [100, 150, 120, 10],
        "entry_ns": pd.array([200, 160, 130, 5], dtype="Int64")})
    v = t.check()
    got = sorted(zip(v["kind"], v["row"]))
    assert got == [("exit_entry_before_exit", 3), ("thread_overlap", 1),
                   ("thread_time_backwards", 2)]


def test_aio_bh_timer_loop_stage_order(tmp_path):
    t = load(tmp_path,
             aio={"thread": [1, 1], "submit_ns": [0, 10], "start_ns": [5, 5],
                  "done_ns": [6, 20], "complete_ns": [7, 30]},
             bh={"thread": [2], "scheduled_ns": [50], "run_ns": [60],
                 "done_ns": [55]},
             timers={"thread": [2], "armed_ns": [100], "expire_ns": [90],
                     "fire_ns": [95], "done_ns": [96]},
             loop={"thread": [2, 2], "poll_enter_ns": [0, 50],
                   "poll_exit_ns": [10, 40], "dispatch_end_ns": [60, 70]})
    v = t.check()
    got = dict(zip(v["kind"], v["detail"]))
    assert got == {
        "aio_stage_order": "start_ns 5 < submit_ns 10",
        "bh_stage_order": "done_ns 55 < run_ns 60",
        "timer_stage_order": "fire_ns 95 < armed_ns 100",
        "loop_stage_order": "poll_exit_ns 40 < poll_enter_ns 50",
        "thread_overlap": "poll_enter_ns 50 < previous iteration's "
                          "dispatch_end_ns 60",
    }


def test_unknown_thread_reported_once_per_table_and_id(tmp_path):
    t = load(tmp_path, locks={"thread": [1, 9, 9], "request_ns": [0, 10, 20],
                              "acquired_ns": [0, 10, 20],
                              "released_ns": [5, 15, 25]})
    v = t.check()
    assert v["kind"].tolist() == ["unknown_thread"]
    assert v.loc[0, "detail"] == "thread 9 not in the threads table (2 rows)"


def test_every_violation_kind_is_documented():
    assert len(VIOLATIONS) == 13


def test_overlap_tolerance(tmp_path):
    # main takes the lock 5 ns before vcpu0's release is stamped.
    t = load(tmp_path, locks={"thread": [1, 2], "request_ns": [0, 50],
                              "acquired_ns": [0, 95],
                              "released_ns": [100, 150]})
    assert kinds(t) == ["lock_overlap"]
    assert t.check(tolerance_ns=5).empty
    assert kinds(t.window(None, None)) == ["lock_overlap"]
