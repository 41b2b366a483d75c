"""Request paths on real recordings: every block request of a disk-io or
mixed run, and every timer tick of a timer-hlt run, is followed from the
guest's OUT exit (or the deadline) to the vCPU taking its interrupt, with
every stage matched and the stages adding up to its end-to-end time; with
the in-kernel and the userspace irqchip."""
import json

import numpy as np
import pytest

from kvmscope import board
from kvmscope.analysis import Trace, paths

from .helpers import kvmscope

pytestmark = pytest.mark.kvm

RUNS = {
    "disk-io": ["disk-io", "-n", "100"],
    "disk-io-user": ["disk-io", "-n", "100", "--irqchip", "user"],
    "mixed": ["mixed", "--vcpus", "2", "-n", "60"],
    "timer-hlt-user": ["timer-hlt", "--vcpus", "2", "-n", "40", "--irqchip", "user"],
}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    out = {}
    for name, argv in RUNS.items():
        path = tmp_path_factory.mktemp("paths") / name
        kvmscope("run", *argv, "-q", "-o", path, check=0)
        out[name] = Trace.load(path)
    return out


def adds_up(p, kind):
    cols = [f"{s}_ns" for s in paths.STAGES[kind]]
    assert p["matched"].all(), p[~p["matched"]].T
    assert (p[cols].to_numpy(dtype=np.int64) >= 0).all()
    assert (p[cols].sum(axis=1) == p["total_ns"]).all()
    assert (p["end_ns"] - p["start_ns"] == p["total_ns"]).all()


@pytest.mark.parametrize("name", ["disk-io", "disk-io-user", "mixed"])
def test_every_block_request_has_a_whole_path(recorded, name):
    t = recorded[name]
    p = paths.request_paths(t, "block")
    assert len(p) == len(t.aio) > 0
    adds_up(p, "block")
    # Each starts at the guest's OUT to the command register of its vCPU's
    # bank, the exit the request was queued in.
    ex = t.exits.iloc[p["exit_row"].to_numpy()]
    assert (ex["addr"].to_numpy() == board.BLK_PORT + board.BLK_REG_CMD).all()
    assert ex["is_write"].all() and (ex["reason"] == "io").all()
    assert (ex["thread"].to_numpy() == p["thread"].to_numpy()).all()
    assert (ex["exit_ns"].to_numpy() == p["start_ns"].to_numpy(dtype=np.int64)).all()
    # The AIO stages are the aio table's.
    aio = t.aio.iloc[p["aio_row"].to_numpy()]
    assert (p["queue_ns"].to_numpy(dtype=np.int64) == aio["queue_ns"].to_numpy()).all()
    assert (p["io_ns"].to_numpy(dtype=np.int64) == aio["io_ns"].to_numpy()).all()
    # The completion raised the interrupt of the vCPU that asked.
    raised = t.irqs.iloc[p["raise_row"].to_numpy()]
    assert (raised["kind"] == "raise").all()
    assert (raised["vcpu"].to_numpy() == p["vcpu"].to_numpy()).all()
    assert (raised["vector"] == board.BLK_VECTOR).all()


def test_userspace_irqchip_ends_at_the_inject(recorded):
    t = recorded["disk-io-user"]
    p = paths.request_paths(t, "block")
    inj = t.irqs.iloc[p["delivery_row"].to_numpy()]
    assert (inj["kind"] == "inject").all() and (inj["vector"] == board.BLK_VECTOR).all()
    assert (inj["ts_ns"].to_numpy() == p["end_ns"].to_numpy(dtype=np.int64)).all()


def test_every_timer_tick_has_a_whole_path(recorded):
    for name in ("mixed", "timer-hlt-user"):
        t = recorded[name]
        p = paths.request_paths(t, "timer")
        assert len(p) == len(t.timers) > 0
        adds_up(p, "timer")
        late = t.timers["late_ns"].to_numpy()[p["timer_row"].to_numpy()]
        assert (p["late_ns"].to_numpy(dtype=np.int64) == late).all()


def test_the_command_on_a_recording(recorded):
    t = recorded["mixed"]
    out = kvmscope("path", t.path, "--format", "json", "--limit", "3", check=0).stdout
    doc = json.loads(out)
    assert doc["block"]["paths"] == doc["block"]["matched"] == len(t.aio)
    assert doc["timer"]["paths"] == len(t.timers)
    totals = [r["total_ns"] for r in doc["block"]["slowest"]]
    assert totals == sorted(totals, reverse=True) and len(totals) == 3
    text = kvmscope("path", t.path, "--kind", "block", "--limit", "1", check=0).stdout
    assert f"Block requests: {len(t.aio)} paths, every stage matched in {len(t.aio)}" in text
