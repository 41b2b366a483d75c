"""A real QEMU traced by `kvmscope qemu` (marked `qemu`: skipped with the
reason where qemu-system-x86_64 cannot boot a traced guest on KVM here).
Every run lasts a second or two."""
import json
import os
import subprocess
import sys

import pytest

from kvmscope import qemu_run
from kvmscope.analysis import Trace

pytestmark = pytest.mark.qemu

KVMSCOPE = [sys.executable, "-m", "kvmscope.cli"]


def kvmscope(*argv, timeout=120):
    return subprocess.run(KVMSCOPE + [str(a) for a in argv], capture_output=True, text=True,
                          timeout=timeout)


def test_pio_storm_on_two_vcpus(tmp_path):
    proc = kvmscope("qemu", "-o", tmp_path / "t", "--guest", "pio-storm", "--vcpus", "2",
                    "-n", "3000", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["guest_status"] == 0 and out["qemu_exit_status"] == 1
    t = Trace.load(tmp_path / "t")
    assert t.meta["qemu"]["version"].startswith("QEMU emulator version")
    assert "-trace" in t.meta["qemu"]["command"] and "-cpu" in t.meta["qemu"]["command"]
    io = t.exits[t.exits["reason"] == "io"].groupby("thread_name", observed=True).size()
    # vCPU 1 runs the guest only (the last vCPU to finish also writes
    # isa-debug-exit); vCPU 0 also ran the firmware
    assert io["vcpu1"] in (3000, 3001) and io["vcpu0"] >= 3000
    bql = t.locks[t.locks["lock"] == "bql"]
    port = bql.groupby("callsite", observed=True).size().idxmax()
    # one BQL acquisition per port access, taken where QEMU dispatches it
    assert port.startswith(("softmmu/physmem.c:", "system/physmem.c:"))
    assert (bql["callsite"] == port).sum() == io.sum()
    assert kvmscope("validate", tmp_path / "t").returncode == 0


def test_mixed_checks_its_data_and_the_thread_pool_is_traced(tmp_path):
    proc = kvmscope("qemu", "-o", tmp_path / "t", "--guest", "mixed", "--vcpus", "2", "-n", "40")
    assert proc.returncode == 0, proc.stdout + proc.stderr     # no sector read back wrong
    assert "guest reported status 0" in proc.stdout
    t = Trace.load(tmp_path / "t")
    assert len(t.aio) >= 80 and t.meta["qemu"]["aio_stages"] == "reconstructed"
    assert set(t.threads["role"]) >= {"main", "vcpu", "aio"}
    assert kvmscope("validate", tmp_path / "t").returncode == 0


def test_a_guest_that_fails_gives_status_1_and_a_trace(tmp_path):
    # mixed without its disks: every request fails, the guest says so
    cmd = qemu_run.guest_command("mixed", 1, 5)
    proc = kvmscope("qemu", "-o", tmp_path / "t", "--", *cmd)
    assert proc.returncode == 1, proc.stderr
    assert "guest reported status 5" in proc.stdout
    assert Trace.load(tmp_path / "t").meta["tables"]["locks"] > 0


def test_any_qemu_command_with_minimal_events_and_duration(tmp_path):
    # a guest that would run for minutes, stopped cleanly; its log kept
    cmd = qemu_run.guest_command("pio-storm", 1, 2_000_000_000)
    proc = kvmscope("qemu", "-o", tmp_path / "t", "--events", "minimal", "--duration", "1.5s",
                    "--log", tmp_path / "q.log", "--", *cmd)
    assert proc.returncode == 0, proc.stderr
    assert "stopped at --duration" in proc.stdout
    assert "no kvm_vcpu_ioctl events" in proc.stdout
    t = Trace.load(tmp_path / "t")
    assert t.meta["state"] == "complete" and len(t.exits) > 1000
    assert t.exits["entry_ns"].isna().all()
    with open(tmp_path / "q.log") as f:
        assert f.readline().split(":", 1)[1].split()[0] in ("qemu_mutex_lock", "qemu_mutex_locked",
                                                            "qemu_mutex_unlock", "kvm_run_exit")


def test_plain_cpu_host_is_handled(tmp_path):
    """Where KVM cannot set MSR 0x10a (nested hosts), plain -cpu host aborts
    QEMU: one line says which -cpu to use.  Elsewhere the run succeeds."""
    cmd = qemu_run.guest_command("pio-storm", 1, 10, cpu="host")
    proc = kvmscope("qemu", "-o", tmp_path / "t", "--", *cmd)
    if qemu_run.MSR_10A in proc.stderr:
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines()[-1] == (
            "kvmscope qemu: error: qemu-system-x86_64 aborted: KVM on this host cannot set "
            "MSR 0x10a (IA32_ARCH_CAPABILITIES): use -cpu host,-arch-capabilities")
        assert not os.path.exists(tmp_path / "t")
    else:
        assert proc.returncode == 0, proc.stderr
