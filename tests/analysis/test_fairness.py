"""Hand-off and fairness: owner changes, re-acquisitions while others
waited, barging, starvation, ping-pong chains and convoys, on hand-made
timelines worked out below, synthetic and shipped traces."""
import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from kvmscope.analysis import Trace
from kvmscope.analysis.synth import make_trace, write_trace

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
THREADS = pd.DataFrame({"thread": [1, 2, 3], "tid": [11, 12, 13], "name": ["A", "B", "C"],
                        "role": "vcpu"})


def load(tmp_path, rows):
    """rows: (thread, callsite, request, acquired, released)."""
    df = pd.DataFrame(rows, columns=["thread", "callsite", "request_ns", "acquired_ns", "released_ns"])
    return Trace.load(write_trace(tmp_path / "t", threads=THREADS, locks=df))


@pytest.fixture
def unfair(tmp_path):
    # A holds [0,100]; B asks at 10, C at 20; C gets it first [100,140]
    # (barging past B), B at 150 [150,160].  C asks again at 165, but B
    # takes it back at 170 without waiting (barging, and re-acquiring while
    # C waits); C gets it at 185.
    return load(tmp_path, [(1, "a:site", 0, 0, 100), (3, "c:site", 20, 100, 140),
                           (2, "b:site", 10, 150, 160), (2, "b:site", 170, 170, 180),
                           (3, "c:site", 165, 185, 190)])


def test_fairness_per_thread(unfair):
    f = unfair.fairness().set_index("thread_name")
    assert f.loc[["A", "B", "C"], "acquisitions"].tolist() == [1, 2, 2]
    assert f.loc[["A", "B", "C"], "owner_changes"].tolist() == [0, 1, 2]
    assert f.loc[["A", "B", "C"], "reacquired_while_waited"].tolist() == [0, 1, 0]
    assert f.loc[["A", "B", "C"], "barged"].tolist() == [0, 1, 1]
    # B's wait [10,150] saw C take the lock once; C's [165,185] saw B once.
    assert f.loc[["A", "B", "C"], "passed_over_max"].tolist() == [0, 1, 1]
    assert f.loc[["A", "B", "C"], "starved_max_ns"].tolist() == [0, 140, 80]
    assert f.loc["B", "starved_at"] == "0.000ms:0.001ms"      # [10, 150] ns after the start
    assert f.loc[["B", "C"], "wait_total_ns"].tolist() == [140, 100]
    # Longest starvation first.
    assert unfair.fairness()["thread_name"].tolist() == ["B", "C", "A"]
    # Owner changes agree with lock_stats' hand-offs.
    assert f["owner_changes"].sum() == unfair.lock_stats()["handoffs"].sum()


def test_convoys(unfair):
    c = unfair.convoys(min_handoffs=1)
    assert c[["start_ns", "end_ns", "acquisitions", "handoffs", "threads", "max_waiting",
              "wait_ns", "first_holder", "first_callsite"]].values.tolist() == [
        [10, 150, 2, 2, "A,B,C", 2, 220, "A", "a:site"],
        [165, 185, 1, 1, "C", 1, 20, "(none)", "(none)"]]
    assert c["duration_ns"].tolist() == [140, 20]
    assert unfair.convoys(min_handoffs=2)["start_ns"].tolist() == [10]


def test_pingpong_two_threads(tmp_path):
    # A and B alternate six times, each taking the lock 2 ns after the
    # other let go; B asked at 5, before A's release at 10 (waited).  Then
    # C takes it much later.
    rows = [(1, "x", 0, 0, 10), (2, "y", 5, 12, 20), (1, "x", 22, 22, 30), (2, "y", 32, 32, 40),
            (1, "x", 42, 42, 50), (2, "y", 52, 52, 60), (3, "z", 100, 100, 110)]
    p = load(tmp_path, rows).pingpong(min_handoffs=3, max_gap_ns=5)
    assert p[["threads", "start_ns", "end_ns", "handoffs", "waited", "gap_mean_ns",
              "hold_mean_ns"]].values.tolist() == [["A,B", 0, 60, 5, 1, 2.0, 50 / 6]]
    assert p["handoffs_per_ms"].iloc[0] == pytest.approx(5 / 60 * 1e6)
    assert p["window"].iloc[0] == "0.000ms:0.001ms"
    # A chain needs min_handoffs; a longer gap breaks it.
    assert load(tmp_path / "2", rows).pingpong(min_handoffs=6, max_gap_ns=5).empty
    assert load(tmp_path / "3", rows).pingpong(min_handoffs=3, max_gap_ns=1).empty


def test_pingpong_a_third_thread_breaks_the_chain(tmp_path):
    # A, B, C, A, C, A: only C and A alternate (3 hand-offs from row 2).
    rows = [(1, "x", 0, 0, 10), (2, "y", 12, 12, 20), (3, "z", 22, 22, 30), (1, "x", 32, 32, 40),
            (3, "z", 42, 42, 50), (1, "x", 52, 52, 60)]
    p = load(tmp_path, rows).pingpong(min_handoffs=2, max_gap_ns=5)
    assert p[["threads", "start_ns", "end_ns", "handoffs"]].values.tolist() == [["A,C", 22, 60, 3]]


@pytest.mark.parametrize("seed", [0, 1])
def test_invariants_on_synthetic_traces(tmp_path, seed):
    t = Trace.load(make_trace(tmp_path / "s", 20000, threads=3, seed=seed, contention=0.4))
    f = t.fairness()
    stats = t.lock_stats()
    assert f["acquisitions"].sum() == stats["acquisitions"].sum()
    assert f["contended"].sum() == stats["contentions"].sum()
    assert f["owner_changes"].sum() == stats["handoffs"].sum()
    waits = t.lock_waits()
    assert f["starved_max_ns"].max() == waits["wait_ns"].max()
    c = t.convoys(min_handoffs=1)
    # Every contended acquisition falls in exactly one convoy interval.
    assert c["acquisitions"].sum() == stats["contentions"].sum()
    assert (c["duration_ns"] > 0).all() and (c["max_waiting"] >= 1).all()
    p = t.pingpong(min_handoffs=2, max_gap_ns=10**12)
    assert (p["handoffs"] >= 2).all()
    assert p["handoffs"].sum() <= stats["handoffs"].sum()


def test_pio_storm_ping_pongs_and_the_report_zooms_there():
    path = os.path.join(ROOT, "traces", "pio-storm-2vcpu")
    t = Trace.load(path)
    p = t.pingpong()
    # Two vCPUs hammering the BQL bounce it back and forth.
    assert len(p) > 10 and set(p["threads"]) == {"vcpu0,vcpu1"}
    assert p["handoffs"].iloc[0] >= p["handoffs"].iloc[-1]
    # The window of the longest chain, given to --window, shows that chain.
    r = subprocess.run([sys.executable, "-m", "kvmscope.analysis", "report", path, "--section",
                        "pingpong", "--format", "json", "--window", p["window"].iloc[0]],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["pingpong"]
    assert rows[0]["start_ns"] == p["start_ns"].iloc[0]
    assert rows[0]["handoffs"] == p["handoffs"].iloc[0]
