"""The real runner on the real /dev/kvm: exits, the BQL, guests, fatal exits, stopping, tracing."""
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from kvmscope import board
from kvmscope.analysis import Trace

from .helpers import kvmscope, kvmscope_cmd, meta, start, wait_for_rows

pytestmark = pytest.mark.kvm

DEBUG_PORT = board.DEBUG_PORT
EXIT_PORT = board.EXIT_PORT
SCRATCH_MMIO = board.SCRATCH_MMIO


@pytest.fixture(scope="module")
def pio2(tmp_path_factory):
    """One pio-storm recording on 2 vCPUs shared by several tests."""
    out = tmp_path_factory.mktemp("pio2") / "trace"
    proc = kvmscope("run", "pio-storm", "--vcpus", 2, "--iterations", 5000, "-o", out, check=0)
    return out, proc, Trace.load(out)


def test_pio_storm_gives_exactly_n_times_v_port_writes(pio2):
    _, proc, trace = pio2
    ex = trace.exits
    port = ex[(ex.reason == "io") & (ex.addr == DEBUG_PORT)]
    assert len(port) == 5000 * 2
    assert port.groupby("vcpu").size().to_dict() == {0: 5000, 1: 5000}
    assert port.is_write.all() and (port["size"] == 1).all()
    # each vCPU ends with one write to the exit device and never re-enters
    last = ex.sort_values("exit_ns").groupby("vcpu").tail(1)
    assert (last.addr == EXIT_PORT).all() and last.entry_ns.isna().all()
    assert "vcpu0: 5001 exits" in proc.stdout and "vcpu1: 5001 exits" in proc.stdout


def test_every_exit_reenters_at_or_after_its_exit(pio2):
    _, _, trace = pio2
    ex = trace.exits
    done = ex.dropna(subset=["entry_ns"])
    assert len(done) == len(ex) - 2          # only the two final exits lack a re-entry
    assert (done.entry_ns.astype("int64") >= done.exit_ns).all()
    # per vCPU, exits are in time order and the next exit follows the re-entry
    for _, g in done.groupby("vcpu"):
        e = g.exit_ns.to_numpy()
        n = g.entry_ns.astype("int64").to_numpy()
        assert (np.diff(e) > 0).all()
        assert (e[1:] >= n[:-1]).all()


def test_bql_holders_never_overlap_and_every_acquisition_is_released(pio2):
    _, _, trace = pio2
    lk = trace.locks
    vcpu_rows = lk[lk.thread_name.astype(str).str.startswith("vcpu")]
    assert len(vcpu_rows) == 5001 * 2      # one BQL acquisition per PIO exit
    assert lk.released_ns.notna().all()
    assert (lk.request_ns <= lk.acquired_ns).all() and (lk.acquired_ns <= lk.released_ns).all()
    s = lk.sort_values("acquired_ns")
    assert (s.acquired_ns.to_numpy()[1:] >= s.released_ns.to_numpy()[:-1]).all()
    # prev_owner is the thread that released just before each acquisition
    expected_prev = np.r_[-1, s.thread.to_numpy()[:-1]]
    assert (s.prev_owner.to_numpy() == expected_prev).all()
    assert set(vcpu_rows.callsite.astype(str)) == {"pio:debugport", "pio:exitdev"}
    assert set(lk[lk.thread_name == "main"].callsite.astype(str)) == {"main:dispatch"}


def test_trace_metadata_counts_records_per_thread(pio2):
    out, proc, trace = pio2
    m = meta(out)
    assert m["state"] == "complete" and m["stop_reason"] == "guest exit"
    assert m["config"]["vcpus"] == 2 and m["config"]["iterations"] == 5000
    assert m["records"]["vcpu0"] == {"written": 2 * 5001, "lost": 0, "stalls": 0}
    assert m["tables"]["exits"] == len(trace.exits) == 2 * 5001
    assert set(trace.threads.name) == {"vcpu0", "vcpu1", "main", "aio0", "aio1", "drain"}
    assert (trace.threads.tid > 0).all()
    assert "records written, 0 lost" in proc.stdout


def test_every_thread_s_cpu_time_and_wait_for_a_cpu_is_kept(pio2):
    # meta.json stats.cpu: what the kernel accounted to each thread of the
    # run; a vCPU that ran the guest for the whole run has spent CPU time
    # (its guest time included), the main loop slept in poll
    out, proc, trace = pio2
    cpu = meta(out)["stats"]["cpu"]
    assert set(cpu["threads"]) == {"vcpu0", "vcpu1", "main", "aio0", "aio1", "drain"}
    run_ns = {f"vcpu{v['vcpu']}": v["run_ns"] for v in meta(out)["stats"]["vcpus"]}
    for name in ("vcpu0", "vcpu1"):
        t = cpu["threads"][name]
        assert 0.2 * run_ns[name] < t["cpu_ns"] <= 1.05 * run_ns[name], (name, t, run_ns)
        if t["runq_ns"] is not None:
            assert t["cpu_ns"] + t["runq_ns"] <= 1.05 * run_ns[name]
    assert cpu["threads"]["main"]["voluntary"] >= 1          # asleep in poll
    assert cpu["process_cpu_ns"] >= sum(t["cpu_ns"] for t in cpu["threads"].values())
    assert "CPU time (waited for a CPU): vcpu0 " in proc.stdout
    rows = trace.cpu_stats().set_index("thread_name")
    assert rows.loc["vcpu0", "cpu_ns"] == cpu["threads"]["vcpu0"]["cpu_ns"]


def test_mmio_storm_reads_back_what_it_wrote(tmp_path):
    out = tmp_path / "t"
    kvmscope("run", "mmio-storm", "--vcpus", 2, "-n", 2000, "-o", out, check=0)
    ex = Trace.load(out).exits
    mmio = ex[ex.reason == "mmio"]
    assert len(mmio) == 2 * 2 * 2000
    assert set(mmio.addr) == {SCRATCH_MMIO, SCRATCH_MMIO + 8}
    assert (mmio.groupby("vcpu").addr.first() == [SCRATCH_MMIO, SCRATCH_MMIO + 8]).all()
    # the read after each write returned the written value
    for _, g in mmio.sort_values("exit_ns").groupby("vcpu"):
        w = g[g.is_write].data.to_numpy()
        r = g[~g.is_write].data.to_numpy()
        assert (w == r).all() and len(set(w)) > 1000


def test_serial_output_reaches_the_console(tmp_path):
    out = tmp_path / "t"
    proc = kvmscope("run", "serial-hello", "-n", 3, "-o", out, check=0)
    line = "Hello from the kvmscope guest on the serial port!"
    assert proc.stdout.count(line) == 3
    assert (out / "console.log").read_text().count(line) == 3
    ex = Trace.load(out).exits
    assert (ex[ex.device == "serial"].is_write).sum() == 3 * (len(line) + 1)


def test_triple_fault_stops_with_the_error_and_a_readable_trace(tmp_path):
    out = tmp_path / "t"
    proc = kvmscope("run", "triple-fault", "-o", out, check=1)
    assert "vcpu0: guest triple fault (KVM_EXIT_SHUTDOWN) at RIP 0x100" in proc.stdout
    m = meta(out)
    assert m["state"] == "failed" and m["stop_reason"] == "error"
    assert any("triple fault" in msg for msg in m["messages"])
    ex = Trace.load(out).exits
    assert list(ex.reason.astype(str)) == ["shutdown"]


def test_bad_kvm_device_gives_one_clear_line(tmp_path):
    proc = kvmscope("run", "pio-storm", "--kvm-device", "/nonexistent/kvm", "-o", tmp_path / "t", check=2)
    assert proc.stderr.strip().count("\n") == 0
    assert "cannot open /nonexistent/kvm: No such file or directory" in proc.stderr
    assert not (tmp_path / "t").exists()


def test_not_a_kvm_device_is_reported(tmp_path):
    proc = kvmscope("run", "pio-storm", "--kvm-device", "/dev/null", "-o", tmp_path / "t", check=2)
    assert "/dev/null" in proc.stderr and proc.stderr.strip().count("\n") == 0


def test_no_trace_runs_the_same_guest_without_recording(tmp_path):
    proc = kvmscope("run", "pio-storm", "--vcpus", 2, "-n", 3000, "--no-trace", check=0)
    assert "vcpu0: 3001 exits" in proc.stdout and "trace: off" in proc.stdout
    assert "(vCPUs 6002, main loop" in proc.stdout


def test_duration_ends_a_long_run_cleanly(tmp_path):
    out = tmp_path / "t"
    proc = kvmscope("run", "pio-storm", "-n", 4_000_000_000, "--duration", 0.5, "-o", out, check=0, timeout=30)
    m = meta(out)
    assert m["state"] == "stopped" and m["stop_reason"] == "duration"
    trace = Trace.load(out)
    assert len(trace.exits) == m["tables"]["exits"] > 1000
    assert "ended by --duration" in proc.stdout


@pytest.mark.parametrize("sig,status", [(signal.SIGINT, 130), (signal.SIGTERM, 130)])
def test_interrupt_stops_cleanly_and_flushes_the_trace(tmp_path, sig, status):
    out = tmp_path / "t"
    p = start("run", "pio-storm", "--vcpus", 2, "-n", 4_000_000_000, "-o", out)
    wait_for_rows(out, min_bytes=100_000)         # ~2000 exits flushed
    p.send_signal(sig)
    stdout, stderr = p.communicate(timeout=30)
    assert p.returncode == status, stderr
    m = meta(out)
    assert m["state"] == "stopped" and m["stop_reason"] == "interrupted"
    trace = Trace.load(out)
    assert len(trace.exits) == m["tables"]["exits"] > 1000
    assert sum(m["tables"].values()) - m["tables"]["threads"] == sum(r["written"] for r in m["records"].values())
    assert "ended by an interrupt" in stdout


def test_killed_run_leaves_a_readable_trace(tmp_path):
    out = tmp_path / "t"
    p = start("run", "pio-storm", "-n", 4_000_000_000, "-o", out, "-q")
    # the drain writes each batch table by table: wait until both have been written to
    wait_for_rows(out, min_bytes=200_000)
    wait_for_rows(out, table="locks", min_bytes=100_000)
    p.kill()
    p.wait(timeout=10)
    assert meta(out)["state"] == "running"
    trace = Trace.load(out)
    assert len(trace.exits) > 1000 and len(trace.locks) > 1000
    assert (trace.exits.addr == DEBUG_PORT).sum() > 1000


def test_full_rings_drop_and_count_records_unless_lossless(tmp_path):
    lossy, lossless = tmp_path / "lossy", tmp_path / "lossless"
    n = 40000
    proc = kvmscope("run", "pio-storm", "-n", n, "--ring", 64, "-o", lossy, check=0)
    m = meta(lossy)
    rec = m["records"]["vcpu0"]
    assert rec["lost"] > 0 and rec["written"] + rec["lost"] == 2 * (n + 1)
    assert f"{rec['lost']} lost" in proc.stdout and "WARNING" in proc.stdout
    t = Trace.load(lossy)
    assert len(t.exits) + (t.locks.thread_name == "vcpu0").sum() == rec["written"]

    kvmscope("run", "pio-storm", "-n", n, "--ring", 64, "--lossless", "-o", lossless, check=0)
    m = meta(lossless)
    assert m["records"]["vcpu0"]["lost"] == 0 and m["records"]["vcpu0"]["stalls"] > 0
    assert len(Trace.load(lossless).exits) == n + 1


def test_guests_lists_the_built_in_programs():
    proc = kvmscope("guests", check=0)
    names = [line.split()[0] for line in proc.stdout.splitlines()]
    assert {"pio-storm", "mmio-storm", "serial-hello"} <= set(names)
    assert all(len(line.split(None, 1)) == 2 for line in proc.stdout.splitlines())


def test_bad_arguments_give_one_line_errors(tmp_path):
    proc = kvmscope("run", "no-such-guest", "-o", tmp_path / "t", check=2)
    assert "unknown guest 'no-such-guest'" in proc.stderr
    proc = kvmscope("run", "pio-storm", "--vcpus", 0, "-o", tmp_path / "t", check=2)
    assert "--vcpus 0" in proc.stderr
    proc = kvmscope("run", "pio-storm", check=2)
    assert "no trace directory" in proc.stderr
    proc = kvmscope("run", "disk-io", "-m", "2M", "--no-trace", check=2)
    assert proc.stderr.strip() == "kvmscope run: error: --memory 2M is too small for disk-io: it needs at least 4M"


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root and setpriv to run kvmscope as an unprivileged user")
def test_no_permission_on_the_kvm_device_is_explained(tmp_path):
    # /dev/kvm is root-only here (the kvm marker opened it as root): as nobody it is not
    if os.stat("/dev/kvm").st_mode & 0o006:
        pytest.skip("/dev/kvm is world-accessible on this machine")
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    probe = subprocess.run([*nobody, sys.executable, "-c", "import kvmscope._core"],
                           capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip("this installation is not readable by an unprivileged user")
    proc = subprocess.run([*nobody, *kvmscope_cmd("run", "pio-storm", "--no-trace")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("kvmscope run: error: cannot open /dev/kvm: Permission denied "
                                   "(no permission: add the user to the 'kvm' group or run as root)")


def test_lockless_device_is_dispatched_without_the_bql(tmp_path):
    out = tmp_path / "t"
    proc = kvmscope("run", "pio-storm", "--vcpus", 2, "-n", 2000, "--lockless", "debugport", "-o", out, check=0)
    t = Trace.load(out)
    assert ((t.exits.addr == DEBUG_PORT).sum()) == 4000
    assert set(t.locks.callsite.astype(str)) <= {"pio:exitdev", "main:dispatch"}
    assert "(vCPUs 2, main loop" in proc.stdout
    bad = kvmscope("run", "pio-storm", "--lockless", "nodev", "--no-trace", check=2)
    assert "unknown device 'nodev'" in bad.stderr
