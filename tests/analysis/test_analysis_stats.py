"""Statistics on hand-made traces, each figure worked out by hand below."""

import math

import numpy as np
import pandas as pd
import pytest

from kvmscope.analysis import Trace
from kvmscope.analysis.stats import summarize
from kvmscope.analysis.synth import make_trace, write_trace

# The timeline of timelines.py: waits 70 (main) and 30 (vcpu0); holds 100,
# 30, 40, 10, 10; hand-offs at rows 1, 2, 4.
from timelines import VCPU_MAIN_LOCKS as LOCKS
from timelines import VCPU_MAIN_THREADS as THREADS


@pytest.fixture
def trace(tmp_path):
    return Trace.load(write_trace(tmp_path / "t", threads=THREADS, locks=LOCKS,
                                  meta={"start_ns": 0, "end_ns": 400}))


def test_nearest_rank_percentiles():
    v = np.arange(1, 101) * 10                       # 10, 20, ..., 1000
    s = summarize(np.zeros(100, int), v, 1).iloc[0]
    assert (s["p50_ns"], s["p99_ns"], s["min_ns"], s["max_ns"]) == \
        (500, 990, 10, 1000)
    s = summarize(np.zeros(3, int), np.array([300, 100, 200]), 1).iloc[0]
    assert (s["p50_ns"], s["p99_ns"]) == (200, 300)
    assert s["stddev_ns"] == pytest.approx(100.0)     # sample (n - 1)


def test_summarize_many_groups_matches_pandas():
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 40, 5000)                # > 16 groups: sort path
    v = rng.integers(0, 10**6, 5000)
    s = summarize(codes, v, 41)
    g = pd.Series(v).groupby(codes)
    assert s["count"].tolist()[:40] == g.size().tolist()
    assert s["total_ns"].tolist()[:40] == g.sum().tolist()
    assert s["max_ns"].tolist()[:40] == g.max().tolist()
    assert np.allclose(s["stddev_ns"][:40], g.std())
    assert s["count"][40] == 0 and pd.isna(s["p50_ns"][40])


def test_lock_stats_per_lock(trace):
    s = trace.lock_stats().iloc[0]
    assert s["lock"] == "bql"
    assert (s["acquisitions"], s["contentions"], s["handoffs"]) == (5, 2, 3)
    assert s["contention_pct"] == 40.0
    # Waits of contended acquisitions: 70, 30.
    assert (s["wait_total_ns"], s["wait_min_ns"], s["wait_max_ns"]) == \
        (100, 30, 70)
    assert (s["wait_mean_ns"], s["wait_p50_ns"], s["wait_p99_ns"]) == \
        (50.0, 30, 70)
    # Holds: 100, 30, 40, 10, 10.
    assert (s["hold_total_ns"], s["hold_min_ns"], s["hold_max_ns"]) == \
        (190, 10, 100)
    assert (s["hold_mean_ns"], s["hold_p50_ns"], s["hold_p99_ns"]) == \
        (38.0, 30, 100)
    assert s["hold_stddev_ns"] == pytest.approx(math.sqrt(5480 / 4))
    assert s["held_pct"] == pytest.approx(190 / 400 * 100)


def test_lock_stats_per_callsite(trace):
    s = trace.lock_stats(["lock", "callsite"]).set_index("callsite")
    assert s.loc["vcpu:io", ["acquisitions", "contentions", "handoffs",
                             "wait_total_ns", "hold_total_ns",
                             "hold_p50_ns"]].tolist() == [2, 1, 1, 30, 140, 40]
    assert s.loc["main:dispatch", ["acquisitions", "wait_max_ns",
                                   "hold_total_ns"]].tolist() == [2, 70, 40]
    # Never contended: no wait statistics, not zeros.
    assert s.loc["vcpu:mmio", "wait_total_ns"] == 0
    assert pd.isna(s.loc["vcpu:mmio", "wait_p99_ns"])
    assert list(s.index) == ["main:dispatch", "vcpu:io", "vcpu:mmio"]


def test_blockers(trace):
    b = trace.blockers()
    got = {(w, h): (n, ns) for w, h, n, ns in
           b[["waiter_name", "holder_name", "waits", "wait_ns"]].values}
    # main waited [50,120]: vcpu0 held until 100 (50), free 100..120 (20).
    # vcpu0 waited [130,160]: main held until 150 (20), free (10).
    assert got == {("main", "vcpu0"): (1, 50), ("main", "(none)"): (1, 20),
                   ("vcpu0", "main"): (1, 20), ("vcpu0", "(none)"): (1, 10)}
    m = trace.blockers_matrix()
    assert m.loc["main", "vcpu0"] == 50 and m.loc["vcpu0", "main"] == 20


def test_blockers_over_several_holders(tmp_path):
    # Thread 3 waits [0,300] while 1 holds [0,100] and 2 holds [150,250].
    t = Trace.load(write_trace(tmp_path / "t", locks={
        "thread": [1, 2, 3], "request_ns": [0, 10, 0],
        "acquired_ns": [0, 150, 300], "released_ns": [100, 250, 310],
        "contended": [False, True, True]}))
    b = t.blockers()
    got = dict(zip(zip(b["waiter"], b["holder"]), b["wait_ns"]))
    assert got == {(3, 1): 100, (3, 2): 100, (3, -1): 100,
                   (2, 1): 90, (2, -1): 50}


def test_exit_stats(tmp_path):
    t = Trace.load(write_trace(tmp_path / "t", exits={
        "thread": [1, 1, 1, 1],
        "reason": ["io", "io", "mmio", "hlt"],
        "addr": [0x3f8, 0x80, 0xd0000000, 0],
        "exit_ns": [0, 1000, 2000, 3000],
        "entry_ns": pd.array([100, 1300, 2200, None], dtype="Int64")}))
    s = t.exit_stats().set_index("reason")
    assert s["samples"].to_dict() == {"io": 2, "mmio": 1, "hlt": 1}
    assert s["samples_pct"].to_dict() == {"io": 50.0, "mmio": 25.0, "hlt": 25.0}
    assert s.loc["io", "time_pct"] == pytest.approx(400 / 600 * 100)
    assert s.loc["io", ["min_ns", "max_ns", "p50_ns", "p99_ns",
                        "total_ns"]].tolist() == [100, 300, 100, 300, 400]
    assert s.loc["io", "stddev_ns"] == pytest.approx(math.sqrt(20000))
    assert pd.isna(s.loc["hlt", "mean_ns"]) and s.loc["hlt", "time_pct"] == 0
    a = t.exit_stats(["reason", "addr"])
    assert len(a) == 4 and set(a["addr"]) == {0x3f8, 0x80, 0xd0000000, 0}


def test_bh_timer_aio_loop_stats(tmp_path):
    t = Trace.load(write_trace(
        tmp_path / "t",
        bh={"thread": [2, 2], "name": ["blk", "blk"], "scheduled_ns": [0, 20],
            "run_ns": [10, 50], "done_ns": [15, 60]},
        timers={"thread": [2, 2], "name": ["tick", "tick"],
                "expire_ns": [100, 200], "fire_ns": [105, 230],
                "done_ns": [110, 240]},
        aio={"thread": [3, 3], "op": ["read", "read"], "submit_ns": [0, 100],
             "start_ns": [10, 130], "done_ns": [50, 150],
             "complete_ns": [60, 200], "result": [4096, -5]},
        loop={"thread": [2, 2], "poll_enter_ns": [0, 130],
              "poll_exit_ns": [100, 200], "dispatch_end_ns": [130, 210],
              "nready": [1, 0]}))
    bh = t.bh_stats().iloc[0]
    assert (bh["runs"], bh["delay_min_ns"], bh["delay_max_ns"],
            bh["delay_mean_ns"], bh["dur_total_ns"]) == (2, 10, 30, 20.0, 15)
    tm = t.timer_stats().iloc[0]
    assert (tm["fires"], tm["late_p50_ns"], tm["late_max_ns"]) == (2, 5, 30)
    aio = t.aio_stats().set_index("stage")
    assert aio.loc["queue", ["requests", "min_ns", "max_ns"]].tolist() == \
        [2, 10, 30]
    assert aio.loc["io", "total_ns"] == 60
    assert aio.loc["completion", "max_ns"] == 50
    assert aio.loc["total", "p99_ns"] == 100
    assert aio.loc["total", "errors"] == 1 and aio.loc["total", "bytes"] == 4096
    lp = t.loop_stats().iloc[0]
    assert (lp["iterations"], lp["span_ns"], lp["timeouts"]) == (2, 210, 1)
    assert (lp["poll_total_ns"], lp["dispatch_total_ns"]) == (170, 40)
    assert lp["wakeups_per_s"] == pytest.approx(2 / 210e-9)
    assert lp["poll_pct"] == pytest.approx(170 / 210 * 100)


def test_generated_trace_statistics_are_consistent(tmp_path):
    t = Trace.load(make_trace(tmp_path / "g", 4000, threads=3, seed=5))
    ls = t.lock_stats().set_index("lock")
    locks = t.locks
    bql = locks[locks["lock"] == "bql"]
    assert ls.loc["bql", "acquisitions"] == len(bql)
    assert ls.loc["bql", "hold_total_ns"] == bql["hold_ns"].sum()
    assert ls.loc["bql", "wait_max_ns"] == bql["wait_ns"][bql["contended"]].max()
    assert ls.loc["bql", "handoffs"] == len(t.handoffs("bql"))
    cs = t.lock_stats(["lock", "callsite"])
    assert cs["acquisitions"].sum() == len(locks)
    # Every contended nanosecond is attributed exactly once.
    waits = t.lock_waits()
    assert t.blockers()["wait_ns"].sum() == waits["wait_ns"].sum()
    ex = t.exit_stats()
    assert ex["samples"].sum() == len(t.exits)
    assert ex["samples_pct"].sum() == pytest.approx(100)


def test_docstring_examples_run():
    import doctest
    import importlib
    for name in ("trace", "stats", "report", "cli", "synth"):
        mod = importlib.import_module("kvmscope.analysis." + name)
        assert doctest.testmod(mod).failed == 0, name


def test_cpu_stats_from_the_kernel_accounting_in_meta(tmp_path):
    # stats.cpu as `kvmscope run` writes it; the kernel's missing figures
    # (None) and damaged ones (negative, text) become <NA>, never a number
    cpu = {"threads": {"vcpu0": {"cpu_ns": 300, "runq_ns": 100, "slices": 4, "voluntary": 1, "involuntary": 3},
                       "main": {"cpu_ns": 50, "runq_ns": None, "slices": None, "voluntary": 7,
                                "involuntary": 0},
                       "aio0": {"cpu_ns": -5, "runq_ns": "x", "slices": 0, "voluntary": 1, "involuntary": 0}},
           "process_cpu_ns": 500, "other_cpu_ns": 150}
    t = Trace.load(write_trace(tmp_path / "t", meta={"stats": {"cpu": cpu}}, threads=THREADS, locks=LOCKS))
    df = t.cpu_stats().set_index("thread_name")
    assert df.index.tolist() == ["vcpu0", "main", "aio0", "(other threads)"]
    assert df.loc["vcpu0", ["cpu_ns", "runq_ns", "slices", "delay_mean_ns"]].tolist() == [300, 100, 4, 25]
    assert df.loc["vcpu0", "runq_pct"] == pytest.approx(25.0)
    assert pd.isna(df.loc["main", "runq_ns"]) and pd.isna(df.loc["main", "runq_pct"])
    assert pd.isna(df.loc["aio0", "cpu_ns"]) and pd.isna(df.loc["aio0", "runq_ns"])
    assert pd.isna(df.loc["aio0", "delay_mean_ns"])            # no slice: no mean
    assert df.loc["(other threads)", "cpu_ns"] == 150
    # a trace without it (imported, or older) has an empty table with the same columns
    bare = Trace.load(write_trace(tmp_path / "b", threads=THREADS, locks=LOCKS)).cpu_stats()
    assert bare.empty and bare.columns.tolist() == df.reset_index().columns.tolist()
