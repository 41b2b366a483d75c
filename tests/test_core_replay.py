"""``kvmscope replay --engine core``: a recording's BQL acquisitions run on
real threads through the compiled lock, without KVM, recorded as a trace."""
import json
import os

import pytest

from kvmscope import cli
from kvmscope.analysis import Trace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORDING = os.path.join(ROOT, "traces", "pio-storm-2vcpu")


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


@pytest.fixture(scope="module")
def replays(tmp_path_factory):
    base = tmp_path_factory.mktemp("core")
    plain, longer = base / "plain", base / "longer"
    assert cli.main(["replay", RECORDING, "-o", str(plain), "--engine", "core"]) == 0
    assert cli.main(["replay", RECORDING, "-o", str(longer), "--engine", "core",
                     "--add-hold", "pio:debugport=5us"]) == 0
    return plain, longer


def test_core_replay_takes_the_recorded_acquisitions_and_validates(replays, capsys):
    plain, _ = replays
    recorded, replayed = per_site(Trace.load(RECORDING)), per_site(Trace.load(str(plain)))
    assert replayed["n"].to_dict() == recorded["n"].to_dict()
    status, out, err = run(capsys, "validate", plain)
    assert status == 0, out + err
    meta = json.load(open(os.path.join(plain, "meta.json")))
    assert meta["replay"]["engine"] == "core" and meta["state"] == "complete"
    assert "exits" in " ".join(meta["replay"]["left_out"])
    assert Trace.load(str(plain)).arrow("exits").num_rows == 0


def test_added_hold_shows_in_the_core_replay(replays):
    plain, longer = replays
    a, b = per_site(Trace.load(str(plain))), per_site(Trace.load(str(longer)))
    # the lock was really held 5 us longer at the changed site, and the other vCPU waited for it
    assert b.loc["pio:debugport", "hold"] >= a.loc["pio:debugport", "hold"] + 4500
    assert b["wait"].sum() > a["wait"].sum()
    meta = json.load(open(os.path.join(longer, "meta.json")))
    assert meta["replay"]["changes"] == {"add_hold": {"pio:debugport": 5000.0}}


@pytest.mark.parametrize("option, word", [(["--vcpus", "4"], "--vcpus"),
                                          (["--seed", "1"], "--seed"),
                                          (["--policy", "fifo"], "fifo"),
                                          (["--add-hold", "pio:nosuch=1us"], "pio:nosuch")])
def test_what_the_core_cannot_do_is_one_line(tmp_path, capsys, option, word):
    status, out, err = run(capsys, "replay", RECORDING, "-o", tmp_path / "x", "--engine", "core",
                           *option)
    assert status == 2
    assert len(err.strip().splitlines()) == 1 and word in err
    assert not (tmp_path / "x" / "meta.json").exists()


def test_lockless_device_leaves_the_lock_but_keeps_its_time(tmp_path):
    from kvmscope import core_replay
    mixed = Trace.load(os.path.join(ROOT, "traces", "mixed-2vcpu"))
    before = core_replay.schedules(mixed)
    after = core_replay.schedules(mixed, lockless=["blk"])
    for (name, _, g0, h0, _), (_, _, g1, h1, _) in zip(before, after):
        # the device's handling moves outside the lock: each thread's total time stays
        assert g1.sum() + h1.sum() == pytest.approx(g0.sum() + h0.sum(), rel=1e-9), name
    assert cli.main(["replay", mixed.path, "-o", str(tmp_path / "x"), "--engine", "core",
                     "--lockless", "blk"]) == 0
    got = per_site(Trace.load(str(tmp_path / "x")))["n"].to_dict()
    want = per_site(mixed)["n"].to_dict()
    assert "pio:blk" in want and "pio:blk" not in got
    assert got == {k: v for k, v in want.items() if k != "pio:blk"}
