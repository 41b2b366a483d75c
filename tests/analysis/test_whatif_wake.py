"""Sleeping BQL waiters in re-execution (docs/whatif.md, "The lock"): how
long a waiter that went to sleep takes to run again after a release comes
from the recording when it has enough such hand-offs, else from its other
sleeping wake-ups, else from the host's calibration in ``meta.json``."""
import json
import os
import shutil

import numpy as np
import pytest

from kvmscope.analysis import Trace, reexec_model, whatif

from test_whatif import MIXED, ROOT, run

PIO = os.path.join(ROOT, "traces", "pio-storm-2vcpu")
SITE = "pio:debugport"


def with_calibration(tmp_path, name, values, src=PIO):
    """A copy of a shipped recording whose meta.json carries *values* as the
    host's calibration (the shipped ones predate it)."""
    out = tmp_path / name
    shutil.copytree(src, out)
    meta = json.loads((out / "meta.json").read_text())
    meta["host"]["mutex_wake_ns"] = list(values)
    (out / "meta.json").write_text(json.dumps(meta))
    return Trace.load(str(out))


def test_a_recording_with_enough_sleeping_hand_offs_uses_its_own(mixed):
    p = mixed.reexecute(add_hold={SITE: 5000})
    sw = p.meta["replay"]["sleep_wake"]
    assert sw["source"] == "recording" and sw["n"] >= reexec_model.MIN_SLEEP_SAMPLES


def test_a_hardly_contended_recording_takes_the_host_calibration(tmp_path):
    # the shipped pio-storm recording has 3 hand-offs to a sleeping waiter
    plain = Trace.load(PIO)
    assert plain.reexecute(add_hold={SITE: 5000}).meta["replay"]["sleep_wake"]["source"] == "few recorded"
    cal = with_calibration(tmp_path, "cal", range(15000, 25000, 50))
    sw = cal.reexecute(add_hold={SITE: 5000}).meta["replay"]["sleep_wake"]
    assert sw["source"] == "host calibration"
    assert sw["n"] == 200 + 3
    assert 19000 <= sw["median_ns"] <= 21000


def sleepers_waits(trace):
    """Waits of the contended acquisitions whose waiter had gone to sleep
    (asked more than 300 ns before the release that preceded its turn)."""
    lk = trace.locks.sort_values("acquired_ns")
    acq, rel, req = (lk[c].to_numpy() for c in ("acquired_ns", "released_ns", "request_ns"))
    cont = lk["contended"].to_numpy().astype(bool)
    slept = cont[1:] & (req[1:] < rel[:-1] - reexec_model.SLEEP_THRESHOLD_NS)
    return (acq[1:] - req[1:])[slept]


def test_a_waiter_that_slept_waits_at_least_the_host_s_wake_up(tmp_path):
    # Lengthened by 5 us, the debugport's critical section makes the other
    # vCPU sleep on the BQL thousands of times; none of those waits can be
    # shorter than the wake-up that ends them.
    fast = with_calibration(tmp_path, "fast", [10000 + 10 * i for i in range(200)])
    slow = with_calibration(tmp_path, "slow", [40000 + 40 * i for i in range(200)])
    f, s = (sleepers_waits(t.reexecute(add_hold={SITE: 5000})) for t in (fast, slow))
    assert len(f) > 1000 and len(s) > 1000
    assert np.percentile(s, 5) >= 40000
    assert np.percentile(f, 5) >= 10000
    assert np.percentile(f, 5) < 40000
    assert np.median(f) < np.median(s)


def test_sleeping_wake_ups_are_drawn_yet_the_prediction_is_deterministic(tmp_path):
    # A wake-up at a fixed offset after each release would meet a periodic
    # owner at the same phase every time: drawn (seed 0 unless --seed), the
    # same input still gives the same output.
    t = with_calibration(tmp_path, "cal", [12000 + 60 * i for i in range(200)])
    a, b = (t.reexecute(add_hold={SITE: 5000}) for _ in range(2))
    assert a.locks["acquired_ns"].tolist() == b.locks["acquired_ns"].tolist()
    c = t.reexecute(add_hold={SITE: 5000}, seed=1)
    assert c.locks["acquired_ns"].tolist() != a.locks["acquired_ns"].tolist()


def test_a_calibration_that_is_not_a_list_of_latencies_is_ignored(tmp_path):
    t = with_calibration(tmp_path, "bad", ["x", -5, None, 10**12])
    assert t.reexecute(add_hold={SITE: 5000}).meta["replay"]["sleep_wake"]["source"] == "few recorded"


def test_whatif_names_where_the_wake_ups_came_from(tmp_path, capsys):
    t = with_calibration(tmp_path, "cal", range(15000, 25000, 50))
    status, out, _ = run(capsys, "--no-pager", "whatif", t.path, "--add-hold", f"{SITE}=5us")
    assert status == 0
    assert "sleeping waiters' wake-ups: host calibration (203, median" in out.splitlines()[0]
    status, out, _ = run(capsys, "whatif", t.path, "--add-hold", f"{SITE}=5us", "--format", "json")
    assert json.loads(out)["sleep_wake"]["source"] == "host calibration"
    status, out, _ = run(capsys, "--no-pager", "whatif", MIXED, "--add-hold", f"{SITE}=5us")
    assert "wake-ups" not in out.splitlines()[0]


def test_seeds_give_the_median_prediction_and_its_range(tmp_path, capsys):
    # --seeds 3: seeds 0, 1, 2, each a possible outcome; the table shows the
    # median of each figure and the range the three spanned
    t = with_calibration(tmp_path, "cal", [12000 + 60 * i for i in range(200)])
    status, out, _ = run(capsys, "whatif", t.path, "--add-hold", f"{SITE}=5us", "--seeds", "3",
                         "--format", "json")
    assert status == 0
    doc = json.loads(out)
    assert doc["seeds"] == 3
    fig = {f["metric"]: f for f in doc["figures"]}
    singles = [whatif.metrics(t.reexecute(add_hold={SITE: 5000}, seed=k)) for k in range(3)]
    for k in ("exits_per_s", "bql_wait_ns", "contended_pct"):
        values = sorted(m[k] for m in singles)
        assert fig[k]["predicted"] == pytest.approx(values[1])
        assert fig[k]["predicted_min"] == pytest.approx(values[0])
        assert fig[k]["predicted_max"] == pytest.approx(values[2])
    status, out, _ = run(capsys, "--no-pager", "whatif", t.path, "--add-hold", f"{SITE}=5us",
                         "--seeds", "3")
    lines = out.splitlines()
    assert "median of seeds 0 .. 2" in lines[0]
    assert lines[1].split()[:5] == ["figure", "recorded", "predicted", "range", "change"]
    wait = next(line for line in lines if line.strip().startswith("BQL wait"))
    assert " .. " in wait


@pytest.mark.parametrize("extra, word", [(["--seed", "1"], "not both"), (["--rank"], "--rank"),
                                         (["--seeds", "1"], "--seeds")])
def test_seeds_refuses_what_it_cannot_do_in_one_line(capsys, extra, word):
    argv = ["whatif", PIO] + (["--seeds", "3"] if extra[0] != "--seeds" else [])
    if extra[0] != "--rank":
        argv += ["--add-hold", f"{SITE}=5us"]
    status, out, err = run(capsys, *argv, *extra)
    assert status == 2
    assert word in err and len(err.strip().splitlines()) == 1
