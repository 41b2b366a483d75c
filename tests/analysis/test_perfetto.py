"""``kvmscope export --perfetto``: the output is parsed back and checked
against the rules of the Chrome trace-event format that Perfetto and
chrome://tracing rely on, and against the trace it came from."""

import collections
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from kvmscope.analysis import Trace, cli
from kvmscope.analysis.perfetto import export_perfetto, nest_slices
from kvmscope.analysis.synth import make_trace, write_trace

from timelines import TWO_VCPUS_THREADS as THREADS


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return Trace.load(make_trace(tmp_path_factory.mktemp("pf") / "synth",
                                 3000, threads=3, aio_workers=2, seed=5))


def export(trace, path, **kw):
    info = export_perfetto(trace, path, **kw)
    with open(path) as f:
        doc = json.load(f)                    # strict JSON, or this fails
    return info, doc["traceEvents"], doc


def check_format(events):
    """Assert the trace-event rules viewers need; return X slices by tid."""
    named = set()
    for e in events:
        for key in ("ph", "ts", "pid", "tid", "name"):
            assert key in e, (key, e)
        assert isinstance(e["ts"], (int, float)) and math.isfinite(e["ts"])
        assert isinstance(e["pid"], int) and isinstance(e["tid"], int)
        if e["ph"] == "M" and e["name"] == "thread_name":
            named.add(e["tid"])
    slices = collections.defaultdict(list)
    async_open = collections.defaultdict(list)
    flows = collections.Counter()
    # Flow events are matched by id, not file order: a step may precede its
    # start in the file; it must still have one.
    started = {(e["cat"], e["id"], e["name"]) for e in events if e["ph"] == "s"}
    for e in events:
        ph = e["ph"]
        assert ph in "MXbeistf", ph                 # no B/E: X slices only
        if ph != "M" and e["tid"] != 0:
            assert e["tid"] in named, f"thread {e['tid']} has no name"
        if ph == "X":
            assert isinstance(e["dur"], (int, float)) and e["dur"] >= 0
            slices[e["tid"]].append((e["ts"], e["ts"] + e["dur"], e))
        elif ph in "be":
            key = (e["cat"], e["id"], e["name"])
            if ph == "b":
                async_open[key].append(e["ts"])
            else:
                assert async_open[key], f"'e' without 'b': {key}"
                assert async_open[key].pop() <= e["ts"]
        elif ph in "stf":
            key = (e["cat"], e["id"], e["name"])
            if ph == "t":
                # a step binds to an open flow (a request's path: s, t..., f)
                assert key in started, f"'t' without 's': {key}"
            else:
                flows[key] += 1 if ph == "s" else -1
            if ph in "tf":
                assert e["bp"] == "e"
    assert not [k for k, v in async_open.items() if v], "unmatched 'b'"
    assert not [k for k, v in flows.items() if v], "flow start without end"
    # Slices of one thread form a tree: disjoint or nested, never partial.
    for tid, sl in slices.items():
        sl.sort(key=lambda x: (x[0], -x[1]))
        stack = []
        for s, end, e in sl:
            while stack and stack[-1] <= s + 1e-9:
                stack.pop()
            assert not stack or end <= stack[-1] + 1e-9, \
                f"partial overlap on tid {tid}: {e}"
            stack.append(end)
    return slices


def deepest(slices, tid, ts):
    """The innermost X slice on *tid* containing *ts*, or None (1 ps of slack:
    ts and dur are float microseconds, and a BQL hold can be 1 ns long)."""
    inside = [e for s, end, e in slices[tid] if s - 1e-6 <= ts <= end + 1e-6]
    return min(inside, key=lambda e: e["dur"]) if inside else None


# --------------------------------------------------------------------------

def test_tiny_trace_events_and_values(tiny, tmp_path):
    info, events, doc = export(tiny, tmp_path / "t.json")
    slices = check_format(events)
    assert info["events"] == len(events) and info["clamped_slices"] == 0
    assert doc["displayTimeUnit"] == "ns"
    assert doc["otherData"]["start_ns"] == 1000
    names = {e["tid"]: e["args"]["name"] for e in events
             if e["name"] == "thread_name"}
    assert names == {101: "vcpu0", 102: "vcpu1", 103: "drain"}
    order = {e["tid"]: e["args"]["sort_index"] for e in events
             if e["name"] == "thread_sort_index"}
    assert order[101] < order[102] < order[103]

    X = [e for e in events if e["ph"] == "X"]
    exits = [e for e in X if e["cat"] == "exit"]
    assert [(e["name"], e["tid"], e["ts"], e["dur"]) for e in exits] == [
        ("io", 101, 0.0, 0.4), ("io", 102, 0.05, 0.55),
        ("io", 101, 1.0, 0.3), ("io", 102, 1.05, 0.45)]
    assert exits[0]["args"] == {"port": "0x80", "size": 1, "write": True,
                                "data": 7, "device": "debugport"}
    holds = [e for e in X if e["cat"] == "lock"]
    assert [(e["name"], e["tid"], e["ts"], e["dur"]) for e in holds] == [
        ("bql vcpu:io", 101, 0.1, 0.1), ("bql vcpu:io", 102, 0.21, 0.29),
        ("bql vcpu:io", 101, 1.1, 0.1), ("bql vcpu:io", 102, 1.22, 0.18)]
    assert holds[1]["args"] == {"wait_ns": 60, "hold_ns": 290,
                                "contended": True, "prev_owner": "vcpu0"}
    # Every hold is nested in the exit it was taken in.
    for h in holds:
        assert deepest(slices, h["tid"], h["ts"]) is h
        parents = [e for e in exits if e["tid"] == h["tid"]
                   and e["ts"] <= h["ts"]
                   and h["ts"] + h["dur"] <= e["ts"] + e["dur"]]
        assert len(parents) == 1

    waits = [e for e in events if e["ph"] in "be"]
    assert [(e["ph"], e["name"], e["tid"], e["ts"]) for e in waits] == [
        ("b", "vcpu1 waits for bql", 102, 0.15),
        ("e", "vcpu1 waits for bql", 102, 0.21),
        ("b", "vcpu1 waits for bql", 102, 1.15),
        ("e", "vcpu1 waits for bql", 102, 1.22)]
    assert waits[0]["cat"] == "lock_wait" and waits[0]["id"] != waits[2]["id"]


def test_handoff_flows_join_the_two_hold_slices(tiny, tmp_path):
    _, events, _ = export(tiny, tmp_path / "t.json")
    slices = check_format(events)
    starts = [e for e in events if e["ph"] == "s"]
    ends = {e["id"]: e for e in events if e["ph"] == "f"}
    assert [(e["tid"], ends[e["id"]]["tid"]) for e in starts] == \
        [(101, 102), (102, 101), (101, 102)]
    for s in starts:
        f = ends[s["id"]]
        assert s["name"] == f["name"] == "bql hand-off"
        src = deepest(slices, s["tid"], s["ts"])
        dst = deepest(slices, f["tid"], f["ts"])
        # Each end lies inside the hold slice of its thread, 1 ns from the
        # release and from the acquisition.
        assert src["cat"] == dst["cat"] == "lock"
        assert s["ts"] == pytest.approx(src["ts"] + src["dur"] - 0.001)
        assert f["ts"] == pytest.approx(dst["ts"] + 0.001)


def test_every_table_of_a_synthetic_trace(synth, tmp_path):
    info, events, _ = export(synth, tmp_path / "s.json")
    slices = check_format(events)
    count = collections.Counter((e["ph"], e.get("cat")) for e in events)
    lp, aio = synth.loop, synth.aio
    assert count["X", "exit"] == len(synth.exits)
    assert count["X", "lock"] == len(synth.locks)
    assert count["X", "loop"] == 2 * len(lp)
    assert count["X", "bh"] == len(synth.bh)
    assert count["X", "timer"] == len(synth.timers)
    assert count["X", "aio"] == len(aio)
    assert count["i", "irq"] == len(synth.irqs)
    assert count["b", "lock_wait"] == int(synth.locks["contended"].sum())
    assert count["b", "aio"] == 2 * len(aio)            # queue, completion
    assert count["s", "handoff"] == len(synth.handoffs())
    assert count["s", "aio_flow"] == 2 * len(aio)       # submit, complete
    assert info["events"] == len(events)
    # Synthetic nested locks overlap bottom halves: cut, and said so.
    assert info["clamped_slices"] > 0
    # Hand-off flows bind to hold slices on both threads.
    holds = {e["id"]: e for e in events if e["ph"] == "f"
             and e["cat"] == "handoff"}
    for s in (e for e in events if e["ph"] == "s" and e["cat"] == "handoff"):
        assert deepest(slices, s["tid"], s["ts"])["cat"] == "lock"
        f = holds[s["id"]]
        assert deepest(slices, f["tid"], f["ts"])["cat"] == "lock"


def test_slices_that_do_not_nest_are_cut_by_the_documented_rule(tmp_path):
    # The hold outlives the exit by 50 ns (a recorder stamping entry_ns
    # before the release): it ends with its exit; args keep the recording.
    t = Trace.load(write_trace(
        tmp_path / "o", threads=THREADS.iloc[:1],
        exits=pd.DataFrame({"thread": [1], "exit_ns": [0],
                            "entry_ns": [1000]}),
        locks=pd.DataFrame({"thread": [1], "request_ns": [100],
                            "acquired_ns": [100], "released_ns": [1050]})))
    info, events, _ = export(t, tmp_path / "o.json")
    check_format(events)
    assert info["clamped_slices"] == 1
    hold = next(e for e in events if e.get("cat") == "lock")
    assert (hold["ts"], hold["dur"]) == (0.1, 0.9)
    assert hold["args"]["hold_ns"] == 950


def test_nest_slices_rule():
    # level 0 [0,100); level 1 [10,120) -> cut at 100; level 1 [130,140)
    # stays; level 2 [20,60) inside; level 2 [50,90) starts inside the
    # previous level-2 slice -> that one ends at 50.
    track = np.zeros(5, dtype=np.int64)
    start = np.array([0, 10, 130, 20, 50])
    end = np.array([100, 120, 140, 60, 90])
    level = np.array([0, 1, 1, 2, 2])
    assert nest_slices(track, start, end, level).tolist() == \
        [100, 100, 140, 50, 90]
    # A deeper slice that would contain a shallower one ends where it
    # starts; other tracks are independent.
    assert nest_slices(np.array([0, 0, 1]), np.array([0, 5, 5]),
                       np.array([10, 8, 20]), np.array([2, 0, 0])).tolist() \
        == [5, 8, 20]


def test_window_keeps_overlapping_rows_whole(tiny, tmp_path):
    info, events, _ = export(tiny, tmp_path / "w.json", window=(1900, 3000))
    check_format(events)
    exits = [e for e in events if e.get("cat") == "exit"]
    assert [e["ts"] for e in exits] == [1.0, 1.05]
    assert info["window"] == [1900, 3000]
    # The hand-off into the window comes from a hold outside it: not drawn.
    assert len([e for e in events if e["ph"] == "s"]) == 1


def test_max_events_cuts_the_time_span_not_the_pairs(synth, tmp_path):
    info, events, _ = export(synth, tmp_path / "m.json", max_events=5000)
    check_format(events)
    assert len(events) <= 5000
    assert info["cut_ns"] is not None
    last = max(e["ts"] for e in events if e["ph"] == "X")
    assert (info["cut_ns"] - info["start_ns"]) / 1000 >= \
        min(e["ts"] for e in events if e["ph"] == "X")
    full, _, _ = export(synth, tmp_path / "f.json")
    assert full["cut_ns"] is None and full["events"] > 5000
    assert last < (synth.end_ns - synth.start_ns) / 1000


def test_a_trace_without_events_is_still_valid(tmp_path):
    t = Trace.load(write_trace(tmp_path / "e", threads=THREADS))
    info, events, _ = export(t, tmp_path / "e.json")
    check_format(events)
    assert {e["ph"] for e in events} == {"M"} and info["events"] == 7


# --------------------------------------------------------------------------
# command line

def test_cli_export(capsys, synth, tmp_path):
    out = tmp_path / "c.json"
    status = cli.main(["export", synth.path, "--perfetto", str(out),
                       "--window", "1ms:30ms", "--max-events", "500"])
    stdout, stderr = capsys.readouterr()
    assert status == 0
    assert stdout.startswith(f"{out}: ") and "ui.perfetto.dev" in stdout
    assert "--max-events" in stderr                    # told it was cut
    with open(out) as f:
        events = json.load(f)["traceEvents"]
    check_format(events)
    assert len(events) <= 500


def test_cli_export_errors(capsys, tiny, tmp_path):
    for argv, message in (
            (["export", str(tmp_path / "nope"), "--perfetto", "x.json"],
             "trace directory not found"),
            (["export", tiny.path, "--perfetto", str(tmp_path / "d" / "x")],
             "No such file or directory"),
            (["export", tiny.path, "--perfetto", "x.json", "--window", "x"],
             "bad window")):
        assert cli.main(argv) == 2
        _, err = capsys.readouterr()
        assert err.startswith("kvmscope export: error: ") and message in err
        assert err.count("\n") == 1


# --------------------------------------------------------------------------
# a real recording

@pytest.mark.kvm
@pytest.mark.parametrize("guest, n", [("pio-storm", 3000), ("mixed", 100)])
def test_export_of_a_real_recording(tmp_path, guest, n):
    exe = shutil.which("kvmscope", path=os.path.dirname(sys.executable))
    argv = ([exe] if exe else [sys.executable, "-m", "kvmscope.cli"]) + [
        "run", guest, "--vcpus", "2", "-n", str(n),
        "-o", str(tmp_path / "real"), "-q"]
    subprocess.run(argv, check=True, capture_output=True, timeout=120)
    t = Trace.load(tmp_path / "real")
    info, events, _ = export(t, tmp_path / "real.json")
    slices = check_format(events)
    by_cat = collections.defaultdict(list)
    for e in events:
        by_cat[e["ph"], e.get("cat")].append(e)
    # On the vCPU threads the recorded timestamps nest as they are: every
    # hold sits inside the exit that took it, uncut.
    vcpu_tids = set(t.threads.loc[t.threads["role"] == "vcpu", "tid"])
    for h in by_cat["X", "lock"]:
        if h["tid"] in vcpu_tids:
            assert h["dur"] * 1000 == pytest.approx(h["args"]["hold_ns"],
                                                    abs=0.5)
            # 1 ps of slack: ts and dur are float microseconds
            assert any(e["tid"] == h["tid"] and e["ts"] <= h["ts"] + 1e-6 and
                       h["ts"] + h["dur"] <= e["ts"] + e["dur"] + 1e-6
                       for e in by_cat["X", "exit"])
    # Every hand-off arrow binds to a hold slice at both ends.
    assert len(by_cat["s", "handoff"]) == len(t.handoffs())
    ends = {e["id"]: e for e in by_cat["f", "handoff"]}
    for s in by_cat["s", "handoff"]:
        f = ends[s["id"]]
        assert deepest(slices, s["tid"], s["ts"])["cat"] == "lock"
        assert deepest(slices, f["tid"], f["ts"])["cat"] == "lock"
    # AIO requests (mixed): submitted from a slice, completed in one.
    for s in by_cat["s", "aio_flow"]:
        assert deepest(slices, s["tid"], s["ts"]) is not None
