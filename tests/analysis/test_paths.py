"""Request paths (kvmscope.analysis.paths, kvmscope path) on hand-made
timelines whose every stage is worked out below, plus the shipped traces.

The block timeline, in ns (threads: 1 vcpu0, 2 vcpu1, 3 main, 4 aio0):

- vcpu1 exits at 880 (re-enters at 1200), takes the BQL [950, 1080] at
  ``pio:debugport`` (asked at 900: nobody held it, a 50 ns hand-off wait)
  and queues request B (req 1, a write) at 990; aio0 does B's I/O
  [1000, 1450].
- vcpu0 exits at 1000 (its OUT to the block device; it re-enters only at
  5000), asks for the BQL at 1010, waits behind vcpu1 until 1100
  (vcpu1 held it 1010-1080), holds it to 1300 at ``pio:blk`` and queues
  request A (req 0, a read) at 1200.  A waits in the queue until aio0,
  busy with B until 1450, starts it at 1500; the read is done at 2500.
- The main loop wakes at 2600, asks for the BQL at 2610; vcpu1 (exit
  [2650, 3100]) barges in and holds it [2700, 2990] at ``pio:serial``;
  the loop gets it at 3000.  A timer that expired at 2995 fires at 3100
  (callback to 3150, raising vcpu1's tick at 3120); the ``aio:complete``
  bottom half runs [3400, 3500]: B's completion raises vcpu1's interrupt
  at 3410 (done 3420), A's raises vcpu0's at 3440 (done 3450).
- vcpu0 takes its interrupt when it re-enters at 5000 (in-kernel irqchip);
  vcpu1 is in the guest at 3410 and 3120 and takes them at once.

So A: decode 10, vcpu_bql_wait 90 (behind vcpu1 pio:debugport), dispatch
100, queue 300 (behind aio0, B's write), io 1000, wakeup 110,
loop_bql_wait 390 (behind vcpu1 pio:serial, 290 of the 390), pending 400,
callback 40, delivery 1560: 4000 from 1000 to 5000.  B: 20, 50 (behind
nobody), 40, 10, 450, 1160, 390, 400, 10, 0: 2530 from 880 to 3410.
The tick expired at 2995, while the loop already waited for the BQL:
wakeup 0, loop_bql_wait 5 (the part from 2995: nobody held the BQL then,
though vcpu1 held most of the whole wait), pending 100, callback 20,
delivery 0; late 105, total 125.
"""
import json
import os

import numpy as np
import pandas as pd
import pytest

from kvmscope import cli
from kvmscope.analysis import Trace, paths
from kvmscope.analysis.synth import write_trace

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

THREADS = pd.DataFrame({"thread": [1, 2, 3, 4], "tid": [101, 102, 103, 104],
                        "name": ["vcpu0", "vcpu1", "main", "aio0"],
                        "role": ["vcpu", "vcpu", "main", "aio"]})
EXITS = pd.DataFrame({"thread": [2, 1, 2], "vcpu": [1, 0, 1],
                      "exit_ns": [880, 1000, 2650], "entry_ns": [1200, 5000, 3100],
                      "addr": [0x560, 0x560, 0x3f8], "size": 4, "is_write": True,
                      "device": ["blk", "blk", "serial"]})
LOCKS = pd.DataFrame({
    "thread": [2, 1, 2, 3],
    "callsite": ["pio:debugport", "pio:blk", "pio:serial", "main:dispatch"],
    "request_ns": [900, 1010, 2690, 2610], "acquired_ns": [950, 1100, 2700, 3000],
    "released_ns": [1080, 1300, 2990, 3550], "contended": [True, True, False, True]})
AIO = pd.DataFrame({"thread": 4, "req": [1, 0], "op": ["write", "read"],
                    "length": [512, 1024], "result": [512, 1024],
                    "submit_thread": [2, 1], "submit_ns": [990, 1200],
                    "start_ns": [1000, 1500], "done_ns": [1450, 2500],
                    "complete_ns": [3420, 3450]})
BH = pd.DataFrame({"thread": [3], "bh": 1, "name": "aio:complete", "sched_thread": 3,
                   "scheduled_ns": [3050], "run_ns": [3400], "done_ns": [3500]})
TIMERS = pd.DataFrame({"thread": [3], "timer": 0, "name": "timerdev:vcpu1",
                       "armed_ns": [1900], "expire_ns": [2995], "fire_ns": [3100],
                       "done_ns": [3150]})
LOOP = pd.DataFrame({"thread": [3], "poll_enter_ns": [100], "poll_exit_ns": [2600],
                     "dispatch_end_ns": [3600]})
IRQS = pd.DataFrame({"thread": 3, "kind": "raise", "line": [35, 35, 33],
                     "vector": [48, 49, 49], "vcpu": [1, 1, 0], "ts_ns": [3120, 3410, 3440]})

A = {"decode": 10, "vcpu_bql_wait": 90, "dispatch": 100, "queue": 300, "io": 1000,
     "wakeup": 110, "loop_bql_wait": 390, "pending": 400, "callback": 40, "delivery": 1560}
B = {"decode": 20, "vcpu_bql_wait": 50, "dispatch": 40, "queue": 10, "io": 450,
     "wakeup": 1160, "loop_bql_wait": 390, "pending": 400, "callback": 10, "delivery": 0}
TICK = {"wakeup": 0, "loop_bql_wait": 5, "pending": 100, "callback": 20, "delivery": 0}


def make(path, meta=None, **change):
    tables = dict(threads=THREADS, exits=EXITS, locks=LOCKS, aio=AIO, bh=BH,
                  timers=TIMERS, loop=LOOP, irqs=IRQS)
    tables.update(change)
    return Trace.load(write_trace(path, meta=meta, **tables))


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    return make(tmp_path_factory.mktemp("paths") / "t")


def stages(p, i, kind="block"):
    return {s: p.at[i, f"{s}_ns"] for s in paths.STAGES[kind]}


def run(capsys, *argv):
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_the_timeline_is_consistent(trace):
    assert trace.check().empty


def test_each_block_stage_of_each_request(trace):
    p = paths.request_paths(trace, "block")
    assert list(p["req"]) == [1, 0]             # in time order: B was queued first
    assert stages(p, 1) == A and stages(p, 0) == B
    assert p["matched"].all()
    assert list(p["start_ns"]) == [880, 1000] and list(p["end_ns"]) == [3410, 5000]
    assert list(p["total_ns"]) == [2530, 4000]
    for i in range(2):
        assert sum(stages(p, i).values()) == p.at[i, "total_ns"]
    assert list(p["thread_name"]) == ["vcpu1", "vcpu0"] and list(p["vcpu"]) == [1, 0]
    assert list(p["worker_name"]) == ["aio0", "aio0"]
    assert list(p["loop_thread_name"]) == ["main", "main"]


def test_whom_each_wait_was_behind(trace):
    p = paths.request_paths(trace, "block").set_index("req")
    assert (p.at[0, "vcpu_bql_wait_holder"], p.at[0, "vcpu_bql_wait_holder_site"]) == \
        ("vcpu1", "pio:debugport")
    assert (p.at[0, "queue_holder"], p.at[0, "queue_holder_site"],
            p.at[0, "queue_holder_req"]) == ("aio0", "aio:write", 1)
    assert (p.at[0, "loop_bql_wait_holder"], p.at[0, "loop_bql_wait_holder_site"]) == \
        ("vcpu1", "pio:serial")
    # B waited for a BQL nobody held, and for a worker that was idle.
    for stage in ("vcpu_bql_wait", "queue"):
        assert p.at[1, f"{stage}_holder"] == paths.NONE
        assert p.at[1, f"{stage}_holder_site"] == paths.NONE
    assert pd.isna(p.at[1, "queue_holder_req"])


def test_holders_of_whole_waits_are_the_wait_anatomy_holders(trace):
    p = paths.request_paths(trace, "block")
    a = trace.wait_anatomy("bql").set_index("row")
    for stage, row in (("vcpu_bql_wait", "vcpu_lock_row"), ("loop_bql_wait", "loop_lock_row")):
        for i in range(len(p)):
            lr = p.at[i, row]
            if lr in a.index and p.at[i, f"{stage}_holder"] != paths.NONE:
                assert p.at[i, f"{stage}_holder"] == a.at[lr, "holder_name"]
                assert p.at[i, f"{stage}_holder_site"] == a.at[lr, "holder_callsite"]


def test_rows_each_stage_was_matched_in(trace):
    p = paths.request_paths(trace, "block").set_index("req")
    assert p.loc[0, ["exit_row", "vcpu_lock_row", "aio_row", "bh_row", "loop_lock_row",
                     "raise_row", "delivery_row"]].tolist() == [1, 1, 1, 0, 3, 2, 1]
    # B was delivered in the guest: no exit row.
    assert p.at[1, "delivery_row"] == -1


def test_a_timer_tick_that_expired_while_the_loop_waited(trace):
    p = paths.request_paths(trace, "timer")
    assert len(p) == 1 and stages(p, 0, "timer") == TICK
    assert (p.at[0, "late_ns"], p.at[0, "total_ns"]) == (105, 125)
    assert p.at[0, "late_ns"] == trace.timers["late_ns"].iloc[0]
    assert (p.at[0, "thread_name"], p.at[0, "vcpu"], p.at[0, "name"]) == \
        ("vcpu1", 1, "timerdev:vcpu1")
    # Only the part of the wait after the deadline counts, and nobody held
    # the BQL then, although vcpu1 held most of the whole wait.
    assert p.at[0, "loop_bql_wait_holder"] == paths.NONE
    whole = trace.wait_anatomy("bql").set_index("row").loc[p.at[0, "loop_lock_row"]]
    assert whole["holder_name"] == "vcpu1"


def test_userspace_irqchip_delivers_at_the_inject(tmp_path):
    inject = pd.DataFrame({"thread": [2, 1], "kind": "inject", "line": -1,
                           "vector": [49, 49], "vcpu": [1, 0], "ts_ns": [3600, 5010]})
    t = make(tmp_path / "u", meta={"config": {"irqchip": "user"}},
             irqs=pd.concat([IRQS, inject], ignore_index=True))
    p = paths.request_paths(t, "block").set_index("req")
    # A raised at 3440, injected into vcpu0 at 5010; B raised at 3410 and
    # injected at 3600 (the tick's vector 48 was never injected).
    assert (p.at[0, "delivery_ns"], p.at[1, "delivery_ns"]) == (1570, 190)
    assert (p.at[0, "delivery_row"], p.at[1, "delivery_row"]) == (4, 3)
    tick = paths.request_paths(t, "timer")
    assert pd.isna(tick.at[0, "delivery_ns"]) and not tick.at[0, "matched"]
    assert pd.isna(tick.at[0, "total_ns"]) and tick.at[0, "late_ns"] == 105


def test_a_lost_raise_leaves_its_stages_empty_not_misattributed(tmp_path):
    # The main loop's ring dropped the raise of A (3440): the stages that
    # need it are empty; B's raise (3410) is not taken for A's.
    losses = pd.DataFrame({"thread": [3], "lost": [1], "after_ns": [3425],
                           "before_ns": [3450]})
    t = make(tmp_path / "l", irqs=IRQS[IRQS["ts_ns"] != 3440], losses=losses)
    p = paths.request_paths(t, "block").set_index("req")
    assert pd.isna(p.at[0, "callback_ns"]) and pd.isna(p.at[0, "delivery_ns"])
    assert pd.isna(p.at[0, "total_ns"]) and not p.at[0, "matched"]
    assert p.at[0, "raise_row"] == -1
    assert {s: p.at[0, f"{s}_ns"] for s in list(A)[:8]} == dict(list(A.items())[:8])
    s = paths.summary(p.reset_index()).set_index("stage")
    assert s.at["callback", "missing"] == 1 and s.at["io", "missing"] == 0


def test_a_killed_run_does_not_guess_where_the_vcpu_was(tmp_path):
    # Killed at 4000: vcpu0's exit (written when it re-entered, at 5000) is
    # not in the trace, so neither where A started nor when vcpu0 took its
    # interrupt is known; the stages in between are.
    t = make(tmp_path / "k", meta={"state": "running"}, exits=EXITS[EXITS["thread"] != 1])
    p = paths.request_paths(t, "block").set_index("req")
    assert pd.isna(p.at[0, "decode_ns"]) and pd.isna(p.at[0, "start_ns"])
    assert pd.isna(p.at[0, "delivery_ns"]) and pd.isna(p.at[0, "total_ns"])
    assert {s: p.at[0, f"{s}_ns"] for s in list(A)[1:9]} == dict(list(A.items())[1:9])
    # vcpu1's data ends at 3100 too: whether it was still in the guest at B's
    # raise (3410) is not known either.
    assert pd.isna(p.at[1, "delivery_ns"])
    assert {s: p.at[1, f"{s}_ns"] for s in list(B)[:9]} == dict(list(B.items())[:9])


def test_summary_per_stage(trace):
    s = paths.summary(paths.request_paths(trace, "block")).set_index("stage")
    assert list(s.index) == list(paths.STAGES["block"]) + ["total"]
    assert s.at["io", "requests"] == 2 and s.at["io", "total_ns"] == 1450
    assert (s.at["io", "p50_ns"], s.at["io", "max_ns"]) == (450, 1000)
    assert s.at["total", "total_ns"] == 6530
    assert s["share_pct"].iloc[:-1].sum() == pytest.approx(100.0)
    assert s.at["io", "share_pct"] == pytest.approx(100 * 1450 / 6530)
    # Both loop waits were mostly behind vcpu1 at pio:serial: all their time.
    assert s.at["loop_bql_wait", "behind"] == "vcpu1 pio:serial"
    assert s.at["loop_bql_wait", "behind_pct"] == 100.0
    # The queue: A's 300 ns behind B's write, B's 10 ns behind nobody.
    assert s.at["queue", "behind"] == "aio0 aio:write"
    assert s.at["queue", "behind_pct"] == pytest.approx(100 * 300 / 310)
    assert s.at["decode", "behind"] == "" and np.isnan(s.at["decode", "behind_pct"])


def test_filter_and_sort(trace):
    p = paths.request_paths(trace, "block")
    assert list(paths.sort_paths(p, "total")["req"]) == [0, 1]
    assert list(paths.sort_paths(p, "wakeup")["req"]) == [1, 0]
    assert list(paths.sort_paths(p, "start")["req"]) == [1, 0]
    assert list(paths.filter_paths(p, window=(4500, 6000))["req"]) == [0]
    assert list(paths.filter_paths(p, window=(0, 900))["req"]) == [1]
    assert list(paths.filter_paths(p, threads=["vcpu0"])["req"]) == [0]
    assert len(paths.filter_paths(p, threads=["main"])) == 2
    assert list(paths.filter_paths(p, callsites=["pio:debugport"])["req"]) == [0]
    with pytest.raises(ValueError, match="unknown sort key 'nope'; keys are total"):
        paths.sort_paths(p, "nope")
    with pytest.raises(ValueError, match="kinds are block, timer"):
        paths.request_paths(trace, "disk")


def test_trace_methods_and_the_package_function(trace):
    from kvmscope import analysis
    assert trace.request_paths("timer").equals(paths.request_paths(trace, "timer"))
    assert analysis.request_paths(trace).equals(paths.request_paths(trace, "block"))


def test_cli_text(capsys, trace):
    status, out, err = run(capsys, "path", trace.path, "--limit", "1")
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert "Block requests: 2 paths, every stage matched in 2" in lines
    assert "Timer ticks: 1 paths, every stage matched in 1" in lines
    row = next(l for l in lines if l.strip().startswith("loop_bql_wait "))
    assert row.split()[-3:] == ["vcpu1", "pio:serial", "(100%)"]
    # The slowest request in full, each stage with its duration.
    head = lines.index("Slowest block request (by total)")
    # (at: from the trace start, its first record, the loop's poll at 100)
    assert lines[head + 1].strip() == "req 0 (vcpu0 read 1024 B, aio0) at 900ns: 4.00us end to end"
    assert lines[head + 2].split() == ["decode", "10ns"]
    assert lines[head + 3].split() == ["vcpu_bql_wait", "90ns", "behind", "vcpu1",
                                       "pio:debugport"]
    assert lines[head + 5].split() == ["queue", "300ns", "behind", "aio0", "aio:write",
                                       "req", "1"]
    assert "... 1 more (--limit 0 shows all)" in lines


def test_cli_filters(capsys, trace):
    _, out, _ = run(capsys, "path", trace.path, "--kind", "block", "--threads", "vcpu1",
                    "--sort", "start", "--top", "5")
    assert "Block requests: 1 paths" in out and "Timer ticks" not in out
    assert "selected: threads vcpu1" in out and "req 1 (vcpu1 write" in out
    _, out, _ = run(capsys, "path", trace.path, "--window", "4us:", "--format", "json")
    doc = json.loads(out)
    assert [r["req"] for r in doc["block"]["slowest"]] == [0]
    assert doc["timer"]["paths"] == 0
    _, out, _ = run(capsys, "path", trace.path, "--callsite", "pio:deb*", "--format", "json")
    assert json.loads(out)["block"]["paths"] == 1


def test_cli_json(capsys, trace):
    status, out, _ = run(capsys, "path", trace.path, "--format", "json")
    doc = json.loads(out)
    assert status == 0 and doc["block"]["paths"] == 2 and doc["block"]["matched"] == 2
    assert doc["block"]["stages"] == list(paths.STAGES["block"])
    slow = doc["block"]["slowest"][0]
    assert slow["req"] == 0 and slow["total_ns"] == 4000
    assert {s: slow[f"{s}_ns"] for s in A} == A
    assert slow["loop_bql_wait_holder"] == "vcpu1"
    summary = {r["stage"]: r for r in doc["block"]["summary"]}
    assert summary["queue"]["total_ns"] == 310 and summary["delivery"]["max_ns"] == 1560
    assert doc["timer"]["slowest"][0]["late_ns"] == 105


@pytest.mark.parametrize("argv, message", [
    (["--threads", "vcpu9"], "unknown thread 'vcpu9'; threads are vcpu0, vcpu1, main, aio0"),
    (["--sort", "slow"], "argument --sort: invalid choice: 'slow' (choose from 'total'"),
    (["--callsite", "mmio:*"], "no request waited behind call site 'mmio:*'; they waited "
                               "behind aio:write, pio:debugport, pio:serial"),
    (["--window", "1s:2s"], "window 1s:2s is outside the trace"),
    (["--limit", "-1"], "--limit -1 out of range"),
])
def test_cli_bad_input_is_one_line_and_status_2(capsys, trace, argv, message):
    status, out, err = run(capsys, "path", trace.path, *argv)
    assert status == 2 and out == ""
    assert err.startswith("kvmscope path: error: ") and message in err
    assert err.count("\n") == 1


def test_cli_names_the_missing_table(capsys, tmp_path):
    cases = [(dict(aio=None, timers=None), [],
              "no block requests or timer ticks to follow: the aio table and the timers "
              "table have no rows"),
             (dict(timers=None), ["--kind", "timer"],
              "no timer ticks to follow: the timers table has no rows"),
             (dict(bh=None), [], "block requests need the bh table, which has no rows"),
             (dict(irqs=None), ["--kind", "timer"],
              "timer ticks need the irqs table, which has no rows")]
    for i, (change, argv, message) in enumerate(cases):
        t = make(tmp_path / f"m{i}", **change)
        status, out, err = run(capsys, "path", t.path, *argv)
        assert (status, out) == (2, "")
        assert err == f"kvmscope path: error: {t.path}: {message}\n"


def test_the_cli_choices_are_the_library_ones():
    assert cli.PATH_SORT_KEYS == paths.SORT_KEYS
    assert cli.PATH_KINDS == paths.KINDS + ("all",)


def test_plot(trace, tmp_path, capsys):
    from kvmscope.analysis import plot
    fig = trace.plot_request_paths("block")
    bars, boxes = fig.axes[:2]
    assert plot.no_data(fig) is None
    assert [t.get_text() for t in bars.get_yticklabels()] == ["req 0 vcpu0 read",
                                                              "req 1 vcpu1 write"]
    # One bar segment per stage and request; the slowest is 4 us long.
    assert len(bars.patches) == 2 * len(paths.STAGES["block"])
    ends = [p.get_x() + p.get_width() for p in bars.patches]
    assert max(ends) == pytest.approx(4000)      # ns
    assert len(boxes.get_yticklabels()) == len(paths.STAGES["block"])
    out = tmp_path / "p.png"
    status, _, err = run(capsys, "plot", trace.path, "--kind", "path", "--by", "timer",
                         "-o", out)
    assert (status, err) == (0, "") and out.stat().st_size > 1000
    empty = make(tmp_path / "e", aio=None, timers=None)
    status, _, err = run(capsys, "plot", empty.path, "--kind", "path", "-o", out)
    assert status == 1
    assert "no timer ticks in this trace (the timers table is empty)" in err


def test_perfetto_draws_each_path_as_one_flow(trace, tmp_path):
    from kvmscope.analysis.perfetto import export_perfetto
    info = export_perfetto(trace, tmp_path / "p.json", progress=False)
    events = json.loads((tmp_path / "p.json").read_text())["traceEvents"]
    tid = {101: "vcpu0", 102: "vcpu1", 103: "main", 104: "aio0"}
    slices = {}
    for e in events:
        if e["ph"] == "X":
            slices.setdefault(tid[e["tid"]], []).append((e["ts"], e["ts"] + e["dur"]))
    flows = {}
    for e in events:
        if e.get("cat") == "path":
            flows.setdefault((e["name"], e["id"]), []).append(
                (e["ph"], tid[e["tid"]], round(e["ts"] * 1000)))
            # Each end lies inside a slice of its thread, to bind to it.
            assert any(a <= e["ts"] <= b for a, b in slices[tid[e["tid"]]]), e
    chains = sorted(v for v in flows.values())
    # Times from the trace start, its first record (the loop's poll at 100).
    # A: exit (1000) -> aio0's I/O -> the bottom half -> vcpu0's exit ending
    # at 5000; B and the tick were delivered in the guest: no last hop.
    # Each request is one flow: "s", a "t" step at each point between, "f".
    chains = [sorted(c, key=lambda p: (p[2], "stf".index(p[0]))) for c in chains]
    assert sorted(chains) == sorted([
        [("s", "vcpu0", 901), ("t", "aio0", 1401), ("t", "aio0", 2399),
         ("t", "main", 3301), ("t", "main", 3340), ("f", "vcpu0", 4899)],
        [("s", "vcpu1", 781), ("t", "aio0", 901), ("t", "aio0", 1349),
         ("f", "main", 3301)],
        [("s", "main", 2895), ("f", "main", 3001)]])
    assert info["events"] == len(events)


def test_shipped_traces_every_request_matched_and_adds_up():
    for name, kinds in (("mixed-2vcpu", ("block", "timer")),
                        ("disk-io-user-irqchip", ("block",)),
                        ("timer-hlt-2vcpu", ("timer",))):
        t = Trace.load(os.path.join(ROOT, "traces", name))
        for kind in kinds:
            p = paths.request_paths(t, kind)
            assert len(p) == len(t.aio if kind == "block" else t.timers)
            assert p["matched"].all(), (name, kind)
            total = sum(p[f"{s}_ns"] for s in paths.STAGES[kind])
            assert (total == p["total_ns"]).all()
            assert (p[[f"{s}_ns" for s in paths.STAGES[kind]]] >= 0).all().all()
            # A whole BQL wait (not one the request arrived in the middle
            # of) is behind the holder the wait anatomy names.
            a = t.wait_anatomy("bql").set_index("row")
            waits = [("loop_bql_wait", "loop_lock_row", "wakeup")]
            if kind == "block":
                waits.append(("vcpu_bql_wait", "vcpu_lock_row", "decode"))
            for stage, row, before in waits:
                whole = p[(p[f"{stage}_ns"] > 0) & (p[f"{before}_ns"] > 0)
                          & p[row].isin(a.index)]
                got = a.loc[whole[row], ["holder_name", "holder_callsite"]]
                assert (whole[f"{stage}_holder"].astype(str).to_numpy()
                        == got["holder_name"].astype(str).to_numpy()).all()
                assert (whole[f"{stage}_holder_site"].astype(str).to_numpy()
                        == got["holder_callsite"].astype(str).to_numpy()).all()
