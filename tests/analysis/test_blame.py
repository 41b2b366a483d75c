"""Wait anatomy: each contended wait split into held, barged and hand-off
time, on hand-made timelines worked out below, synthetic and shipped traces."""
import os

import numpy as np
import pandas as pd
import pytest

from kvmscope.analysis import Trace, blame
from kvmscope.analysis.synth import make_trace, write_trace
from kvmscope.errors import ConfigError

from timelines import VCPU_MAIN_LOCKS, VCPU_MAIN_THREADS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PARTS = ["held_ns", "barged_ns", "handoff_ns"]


def test_vcpu_main_timeline(tmp_path):
    t = Trace.load(write_trace(tmp_path / "t", threads=VCPU_MAIN_THREADS,
                               locks=VCPU_MAIN_LOCKS))
    a = t.wait_anatomy()
    # main waits [50,120] = 70: vcpu0 (requested at 0, before main) holds
    # [50,100] = 50; the lock is free [100,120] = 20.
    # vcpu0 waits [130,160] = 30: main (requested at 50) holds [130,150] =
    # 20; free [150,160] = 10.  Rows 0, 3, 4 did not wait: not listed.
    assert a["row"].tolist() == [1, 2]
    assert a["thread_name"].tolist() == ["main", "vcpu0"]
    assert a[["wait_ns"] + PARTS].values.tolist() == [[70, 50, 0, 20],
                                                       [30, 20, 0, 10]]
    assert a["holder_name"].tolist() == ["vcpu0", "main"]
    assert a["holder_callsite"].astype(str).tolist() == ["vcpu:io", "main:dispatch"]
    d = t.wait_anatomy_detail()
    assert d[["row", "holder_row", "overlap_ns"]].values.tolist() == [[1, 0, 50],
                                                                      [2, 1, 20]]
    assert not d["barged"].any()


BARGE_THREADS = pd.DataFrame({"thread": [1, 2, 3], "tid": [11, 12, 13],
                              "name": ["A", "B", "C"], "role": "vcpu"})
# A holds [0,100]; B requests at 10, C at 20; C gets the lock at 100 before
# B and holds it to 140; B gets it at 150 and holds it to 160.
BARGE_LOCKS = pd.DataFrame({"thread": [1, 3, 2],
                            "callsite": ["a:site", "c:site", "b:site"],
                            "request_ns": [0, 20, 10],
                            "acquired_ns": [0, 100, 150],
                            "released_ns": [100, 140, 160]})


@pytest.fixture
def barge(tmp_path):
    return Trace.load(write_trace(tmp_path / "b", threads=BARGE_THREADS,
                                  locks=BARGE_LOCKS))


def test_barging(barge):
    a = barge.wait_anatomy().set_index("thread_name")
    # B waits [10,150] = 140: A (requested at 0 <= 10) holds [10,100] = 90;
    # C (requested at 20 > 10: barged) holds [100,140] = 40; free [140,150]
    # = 10.  The longest holder is A.
    b = a.loc["B"]
    assert [b.wait_ns, b.held_ns, b.barged_ns, b.handoff_ns] == [140, 90, 40, 10]
    assert (b.holder_name, b.holder_callsite) == ("A", "a:site")
    # C waits [20,100] = 80, all of it behind A; no hand-off gap.
    c = a.loc["C"]
    assert [c.wait_ns, c.held_ns, c.barged_ns, c.handoff_ns] == [80, 80, 0, 0]
    d = barge.wait_anatomy_detail()
    rows = d[d["thread_name"] == "B"]
    assert rows[["holder_name", "overlap_ns", "barged"]].values.tolist() == [
        ["A", 90, False], ["C", 40, True]]


def test_summary(barge):
    s = blame.summary(barge.wait_anatomy(), ["lock", "thread_name"])
    assert s[["thread_name", "waits", "wait_ns", "held_ns", "barged_ns",
              "handoff_ns"]].values.tolist() == [["B", 1, 140, 90, 40, 10],
                                                 ["C", 1, 80, 80, 0, 0]]
    assert s["barged_pct"].iloc[0] == pytest.approx(100 * 40 / 140)
    total = blame.summary(barge.wait_anatomy(), "lock")
    assert total[["waits", "wait_ns", "barged_ns"]].values.tolist() == [[2, 220, 40]]
    with pytest.raises(ConfigError, match="unknown column 'nope'"):
        blame.summary(barge.wait_anatomy(), ["nope"])


def test_overlapping_owners_are_not_double_counted(tmp_path):
    # An inconsistent trace: A holds [0,100] and B [50,120] at once; C
    # waits [10,200].  [10,100] goes to A (90), [100,120] to B (20), free
    # [120,200] (80): still adding up to the wait of 190.
    t = Trace.load(write_trace(tmp_path / "o", threads=BARGE_THREADS, locks=pd.DataFrame({
        "thread": [1, 2, 3], "request_ns": [0, 0, 10],
        "acquired_ns": [0, 50, 200], "released_ns": [100, 120, 210]})))
    a = t.wait_anatomy().set_index("thread_name")
    assert a.loc["C", ["wait_ns"] + PARTS].tolist() == [190, 110, 0, 80]


def _check_parts(t):
    a = t.wait_anatomy()
    assert len(a) == int(t.locks["contended"].sum())
    assert (a["held_ns"] + a["barged_ns"] + a["handoff_ns"] == a["wait_ns"]).all()
    assert (a[PARTS] >= 0).all().all()
    # The detail adds up to the per-acquisition parts.
    d = t.wait_anatomy_detail()
    held = d[~d["barged"]].groupby("row").overlap_ns.sum()
    barged = d[d["barged"]].groupby("row").overlap_ns.sum()
    a = a.set_index("row")
    assert (held.reindex(a.index, fill_value=0) == a["held_ns"]).all()
    assert (barged.reindex(a.index, fill_value=0) == a["barged_ns"]).all()
    # The same split as blockers(): per waiter, owned time by holder, free time.
    b = t.blockers().groupby(["waiter", "holder"]).wait_ns.sum()
    mine = d.groupby(["thread", "holder_thread"]).overlap_ns.sum()
    free = a.groupby("thread").handoff_ns.sum()
    mine = pd.concat([mine, pd.Series(free.values, index=pd.MultiIndex.from_arrays(
        [free.index, np.full(len(free), -1)]))])
    mine = mine[mine > 0].sort_index()
    b = b[b > 0].sort_index()
    assert mine.values.tolist() == b.values.tolist()
    return a


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_parts_add_up_on_synthetic_traces(tmp_path, seed):
    t = Trace.load(make_trace(tmp_path / "s", 5000, threads=2 + seed, seed=seed,
                              contention=0.3 + 0.2 * seed))
    a = _check_parts(t)
    assert a["held_ns"].sum() > 0 and a["handoff_ns"].sum() > 0


@pytest.mark.parametrize("name", ["mixed-2vcpu", "pio-storm-2vcpu"])
def test_parts_add_up_on_shipped_traces(name):
    a = _check_parts(Trace.load(os.path.join(ROOT, "traces", name)))
    assert len(a) > 0


# --------------------------------------------------------------------------
# waiting caused: critical sections ranked by the wait they made others do

def test_caused_on_the_hand_made_timeline(tmp_path):
    # main waits 70: vcpu0 holds (vcpu:io) 50 of it, free 20; vcpu0 waits 30:
    # main holds (main:dispatch) 20 of it, free 10.  All wait: 100.
    t = Trace.load(write_trace(tmp_path / "t", threads=VCPU_MAIN_THREADS, locks=VCPU_MAIN_LOCKS))
    c = t.caused()
    assert list(c["holder_callsite"]) == ["vcpu:io", "main:dispatch", "(hand-off)"]
    assert list(c["caused_ns"]) == [50, 20, 30]
    assert list(c["caused_pct"]) == pytest.approx([50.0, 20.0, 30.0])
    assert list(c["waits"]) == [1, 1, 2]
    io = c.iloc[0]
    assert io["acquisitions"] == 2 and io["hold_total_ns"] == 140       # holds 100 and 40


def _serialised_run(slow_site, n=600, slow_ns=2000, fast_ns=200, gap_ns=50):
    """Three threads take one lock in request order (FIFO), each cycling over
    three call sites; ``slow_site`` holds it ``slow_ns``, the others ``fast_ns``."""
    sites = ["pio:a", "pio:b", "pio:c"]
    next_request = {1: 0, 2: 10, 3: 20}
    turn = {1: 0, 2: 1, 3: 2}
    free_at, rows = 0, []
    for _ in range(n):
        th = min(next_request, key=next_request.get)
        req = next_request[th]
        site = sites[turn[th] % 3]
        turn[th] += 1
        acq = max(req, free_at)
        rel = acq + (slow_ns if site == slow_site else fast_ns)
        rows.append((th, site, req, acq, rel))
        free_at = rel + 5                       # 5 ns hand-off
        next_request[th] = rel + gap_ns
    return pd.DataFrame(rows, columns=["thread", "callsite", "request_ns", "acquired_ns", "released_ns"])


@pytest.mark.parametrize("slow_site", ["pio:a", "pio:b", "pio:c"])
def test_a_lengthened_critical_section_ranks_first(tmp_path, slow_site):
    threads = pd.DataFrame({"thread": [1, 2, 3], "tid": [11, 12, 13],
                            "name": ["vcpu0", "vcpu1", "main"], "role": ["vcpu", "vcpu", "main"]})
    t = Trace.load(write_trace(tmp_path / "t", threads=threads, locks=_serialised_run(slow_site)))
    c = t.caused()
    assert c.iloc[0]["holder_callsite"] == slow_site
    assert c.iloc[0]["caused_pct"] > 50
    assert c["caused_pct"].sum() == pytest.approx(100.0)


def test_caused_is_the_first_report_section(tmp_path):
    from kvmscope.analysis import report
    assert list(report.SECTIONS)[0] == "caused"
