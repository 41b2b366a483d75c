"""Attacks on the core from inside the guest and from outside: the hostile guest,
the sanitizer build, a soak run and stop cycles, all through the real `kvmscope`."""
import os
import signal
import subprocess
import sys
import time

import pytest

from .helpers import kvmscope, kvmscope_cmd, meta

pytestmark = pytest.mark.kvm

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, "bench")


def _validate(trace):
    proc = kvmscope("validate", trace, timeout=120)
    assert proc.returncode == 0, f"validate {trace}: {proc.stdout}{proc.stderr}"


@pytest.mark.parametrize("irqchip,vcpus,seed", [("kernel", 2, 11), ("user", 1, 12)])
def test_hostile_guest_is_refused_everything(tmp_path, irqchip, vcpus, seed):
    out = tmp_path / "t"
    proc = kvmscope("run", "hostile", "--vcpus", vcpus, "-n", 1500, "--seed", seed, "--irqchip", irqchip,
                    "-q", "--quiet-console", "-o", out, timeout=120)
    m = meta(out)
    statuses = [(v["finished_by_guest"], v["exit_status"]) for v in m["stats"]["vcpus"]]
    assert proc.returncode == 0 and statuses == [(True, 0)] * vcpus, (proc.stderr, statuses, m["messages"])
    assert m["state"] == "complete"
    _validate(out)


def test_hostile_guest_reaches_every_attack(tmp_path):
    """The trace shows the attacks the guest documents: odd and 8-byte MMIO pieces,
    string input in page-sized exits, the end of RAM, refused and valid block requests."""
    from kvmscope.analysis import Trace

    out = tmp_path / "t"
    kvmscope("run", "hostile", "-n", 3000, "--seed", 5, "-q", "--quiet-console", "-o", out,
             timeout=120, check=0)
    m = meta(out)
    ex = Trace.load(str(out)).exits
    io = ex[ex["reason"] == "io"]
    mmio = ex[ex["reason"] == "mmio"]
    assert io["count"].max() >= 1024, "no string input batched a page into one exit"
    assert set(mmio["size"]) >= {1, 2, 4, 8}, sorted(set(mmio["size"]))
    assert set(mmio["size"]) & {3, 5, 6, 7}, "no access was split into odd-sized pieces"
    assert (mmio["addr"] == m["config"]["memory"]).any(), "nothing reached the end of RAM"
    assert ((mmio["addr"] >= 0xd0000000) & (mmio["addr"] < 0xd0001000)).any()
    assert io["addr"].nunique() > 500, "too few distinct ports"
    st = m["stats"]
    assert st["blk"]["errors"] > 100 and st["aio"]["completed"] > 100, st["blk"]
    assert sum(st["timer_ticks"]) > 0


def test_hostile_guest_needs_its_memory(tmp_path):
    proc = kvmscope("run", "hostile", "-m", "4M", "-o", tmp_path / "t", timeout=60)
    assert proc.returncode == 2
    assert "hostile" in proc.stderr and "8M" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_sanitizer_build_runs_the_attacks_clean():
    """bench/sanitize.py: an ASan+UBSan core runs hostile, disk-bad-dma, mixed and pio-storm
    with no sanitizer report (about a minute: most of it is the build)."""
    proc = subprocess.run([sys.executable, os.path.join(BENCH, "sanitize.py")], capture_output=True,
                          text=True, timeout=600)
    if proc.returncode == 2:
        pytest.skip(proc.stderr.strip())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "runs clean" in proc.stdout
