"""The event model on real KVM: main loop, timers, bottom halves, AIO, block and timer devices, interrupts."""
import struct

import numpy as np
import pytest

from kvmscope import board
from kvmscope.analysis import Trace

from .helpers import kvmscope, meta

pytestmark = pytest.mark.kvm

SECTOR = board.BLK_SECTOR_SIZE
M32 = 0xFFFFFFFF


def expected_image(seed, vcpus, iterations, region, sectors):
    """Replay the disk-io guest's request stream (pyx/guests/disk-body.inc) and
    return the bytes its writes must have left in the image."""
    version = np.zeros(sectors, dtype=np.int64)
    for v in range(vcpus):
        x = ((v * 0x9E3779B9) & M32) ^ (seed & M32)
        first = v * region
        for _ in range(iterations):
            x = (x * 1664525 + 1013904223) & M32
            s = x % region
            count = min(1 + ((x >> 8) & 3), region - s)
            if (x >> 16) & 1:
                version[first + s:first + s + count] += 1
    img = bytearray(sectors * SECTOR)
    for sector in np.flatnonzero(version):
        ver = int(version[sector])
        pattern = (((sector * 0x9E3779B1) & M32) ^ ((ver * 0x85EBCA77) & M32)) | 1
        img[sector * SECTOR:(sector + 1) * SECTOR] = struct.pack("<I", pattern) * 128
    return bytes(img)


@pytest.mark.parametrize("vcpus,irqchip", [(1, "kernel"), (2, "kernel"), (2, "user")])
def test_disk_io_leaves_exactly_what_the_guest_wrote(tmp_path, vcpus, irqchip):
    disk, out = tmp_path / "disk.img", tmp_path / "t"
    n, seed = 150, 7
    proc = kvmscope("run", "disk-io", "--vcpus", vcpus, "-n", n, "--seed", seed, "--irqchip", irqchip,
                    "--disk", disk, "--disk-size", "256K", "-o", out, check=0)
    assert proc.stdout.count("status 0") == vcpus        # the guest's own read-back check
    m = meta(out)
    sectors, region = m["disk"]["sectors"], m["disk"]["sectors_per_vcpu"]
    assert sectors == 512 and region == 512 // vcpus
    assert disk.read_bytes() == expected_image(seed, vcpus, n, region, sectors)


def test_aio_requests_go_through_every_stage_in_order(tmp_path):
    out = tmp_path / "t"
    kvmscope("run", "mixed", "--vcpus", 2, "-n", 80, "--aio-threads", 3, "-o", out, check=0)
    t = Trace.load(out)
    aio = t.aio
    m = meta(out)
    # 80 requests and one flush per vCPU
    assert len(aio) == m["stats"]["aio"]["submitted"] == m["stats"]["aio"]["completed"] == 2 * 81
    assert (aio.submit_ns <= aio.start_ns).all() and (aio.start_ns <= aio.done_ns).all()
    assert (aio.done_ns <= aio.complete_ns).all()
    assert set(aio.op.astype(str)) == {"read", "write", "fsync"}
    io = aio[aio.op != "fsync"]
    assert (io.result == io.length).all() and (io.length % SECTOR == 0).all()
    assert set(aio.thread_name.astype(str)) <= {"aio0", "aio1", "aio2"}
    assert set(aio.submit_thread) == {0, 1}
    # the completions were finished by a bottom half in the main loop, under the BQL
    bh = t.bh[t.bh.name == "aio:complete"]
    assert len(bh) >= 1 and (bh.thread_name == "main").all()
    assert (bh.scheduled_ns <= bh.run_ns).all() and (bh.run_ns <= bh.done_ns).all()
    held = t.locks[t.locks.thread_name == "main"]
    for c in aio.complete_ns.to_numpy()[:20]:
        assert ((held.acquired_ns <= c) & (c <= held.released_ns)).any()


def test_guest_ticks_match_timer_fires(tmp_path):
    out = tmp_path / "t"
    n = 30
    proc = kvmscope("run", "timer-hlt", "--vcpus", 2, "-n", n, "--timer-period", "500us", "-o", out, check=0)
    t = Trace.load(out)
    m = meta(out)
    for v in m["stats"]["vcpus"]:
        fires = (t.timers.name == f"timerdev:vcpu{v['vcpu']}").sum()
        assert v["exit_status"] >= n
        assert abs(int(fires) - v["exit_status"]) <= 1
    assert f"ticks {n}" in proc.stdout
    late = t.timers.fire_ns - t.timers.expire_ns
    assert (late >= 0).all()
    # periodic: each vCPU's deadlines stay on its 500 us grid
    for _, g in t.timers.groupby("name", observed=True):
        d = np.diff(g.expire_ns.to_numpy())
        k = np.round(d / 500_000)
        assert (k >= 1).all() and (np.abs(d - k * 500_000) < 2000).all()


@pytest.mark.parametrize("irqchip", ["kernel", "user"])
def test_both_interrupt_paths_deliver(tmp_path, irqchip):
    out = tmp_path / "t"
    kvmscope("run", "timer-hlt", "-n", 10, "--irqchip", irqchip, "-o", out, check=0)
    t = Trace.load(out)
    assert meta(out)["stats"]["vcpus"][0]["exit_status"] >= 10
    kinds = t.irqs.kind.astype(str).value_counts()
    assert kinds["raise"] >= 10
    if irqchip == "user":
        # injected by KVM_INTERRUPT from the vCPU thread, acknowledged by the guest's EOI
        assert kinds["inject"] >= 10 and kinds["ack"] >= 10
        inj = t.irqs[t.irqs.kind == "inject"]
        assert (inj.thread_name == "vcpu0").all() and (inj.vector == 0x30).all()
        assert (t.exits.reason == "hlt").sum() >= 10
    else:
        assert "inject" not in kinds            # the in-kernel APIC injects
        assert (t.exits.reason == "hlt").sum() == 0


def test_dma_outside_guest_ram_is_refused(tmp_path):
    out = tmp_path / "t"
    proc = kvmscope("run", "disk-bad-dma", "-m", "4M", "-o", out, check=0)
    assert "status 0" in proc.stdout            # every bad request got its error status
    m = meta(out)
    assert m["stats"]["blk"] == {"requests": 10, "errors": 8}
    aio = Trace.load(out).aio
    assert len(aio) == 2 and (aio.offset == 0).all()     # only the two valid requests did I/O


def test_main_loop_iterations_are_recorded(tmp_path):
    out = tmp_path / "t"
    kvmscope("run", "serial-hello", "-n", 3, "-o", out, check=0)
    t = Trace.load(out)
    lp = t.loop
    assert len(lp) >= 1 and (np.diff(lp.iter.to_numpy()) == 1).all()
    assert (lp.poll_enter_ns <= lp.poll_exit_ns).all() and (lp.poll_exit_ns <= lp.dispatch_end_ns).all()
    # every BQL hold of the main loop after the first lies within one iteration's dispatch
    held = t.locks[t.locks.thread_name == "main"].sort_values("acquired_ns").iloc[1:]
    pos = np.searchsorted(lp.poll_exit_ns.to_numpy(), held.acquired_ns.to_numpy(), side="right") - 1
    assert (pos >= 0).all()
    assert (held.released_ns.to_numpy() <= lp.dispatch_end_ns.to_numpy()[pos]).all()
    # the serial port's output was written by a bottom half of the main loop
    flush = t.bh[t.bh.name == "serial:flush"]
    assert len(flush) >= 1 and set(flush.sched_thread) == {0}


def test_main_loop_fd_handlers_timers_and_bottom_halves():
    from kvmscope import _core
    _core.calibrate_clock()
    r = _core.loop_selftest()
    assert r["reads_while_gated"] == 0          # read_poll said no: the fd was not read
    assert r["reads"] >= 1 and r["bytes_read"] == 10
    assert r["bh_runs"] == 1                    # three schedules before the run coalesce
    assert r["cancel_returned"] == 1 and r["cancelled_runs"] == 0
    assert r["idle_runs"] >= 1
    assert r["timer_order"] == [1, 2, 0] and r["timers_fired"] == 3      # deadline order; deleted one never fires
