"""Recording under stress: lossless stops always finish, drops are located, a
failing disk and a second interrupt never leave a lying or unreadable trace."""
import resource
import signal
import subprocess
import time

import pytest

from kvmscope.analysis import Trace

from .helpers import kvmscope, kvmscope_cmd, meta, start, wait_for_rows

pytestmark = pytest.mark.kvm


def test_lossless_stop_with_tiny_rings_finishes(tmp_path):
    # 4 vCPUs, main loop and AIO all fill 64-record rings: every producer
    # waits for the drain, some of them while holding the BQL.
    for i in range(3):
        out = tmp_path / f"t{i}"
        t0 = time.monotonic()
        kvmscope("run", "mixed", "--vcpus", 4, "-n", 1_000_000_000, "--ring", 64, "--lossless",
                 "--duration", 1, "-q", "-o", out, timeout=30, check=0)
        assert time.monotonic() - t0 < 1 + 8
        m = meta(out)
        assert m["state"] == "stopped" and m["stop_reason"] == "duration"
        assert sum(r["lost"] for r in m["records"].values()) == 0
        assert sum(r["stalls"] for r in m["records"].values()) > 0     # back-pressure did happen
        kvmscope("validate", out, check=0)


def test_dropped_records_are_located_in_the_losses_table(tmp_path):
    out = tmp_path / "t"
    kvmscope("run", "mixed", "--vcpus", 2, "--ring", 64, "-n", 1000, "-q", "-o", out, check=0)
    m = meta(out)
    trace = Trace.load(out)
    names = dict(zip(trace.threads.thread, trace.threads.name))
    lost_by_name = {n: r["lost"] for n, r in m["records"].items() if r["lost"]}
    assert lost_by_name, "a 64-record ring should drop records under mixed"
    located = trace.losses.groupby("thread")["lost"].sum()
    assert {names[t]: int(n) for t, n in located.items()} == lost_by_name
    assert (trace.losses.lost > 0).all()
    # every gap that is closed on both sides is bounded by that thread's records
    closed = trace.losses.dropna(subset=["after_ns", "before_ns"])
    assert len(closed) and (closed.after_ns >= m["start_ns"]).all()


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (3_000_000, 3_000_000))


def test_write_failure_marks_the_trace_failed_and_keeps_it_readable(tmp_path):
    out = tmp_path / "t"
    proc = subprocess.run(kvmscope_cmd("run", "pio-storm", "--vcpus", 2, "-n", 2_000_000,
                                       "--disk-size", "8K", "--quiet-console", "-o", out),
                          preexec_fn=_limit_file_size, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "File too large" in proc.stdout and "records not written" in proc.stdout
    m = meta(out)
    assert m["state"] == "failed" and "File too large" in m["failure"]
    trace = Trace.load(out)            # what was written before the failure stays readable
    assert 1000 < len(trace.exits) < 4_000_000
    assert kvmscope("validate", out).returncode != 1     # imperfect, but no false violation


def test_second_interrupt_aborts_at_once(tmp_path):
    out = tmp_path / "t"
    p = start("run", "mixed", "--vcpus", 2, "-n", 1_000_000_000, "--ring", 64, "--lossless",
              "-q", "-o", out)
    wait_for_rows(out, min_bytes=20_000)
    # two different signals back to back: both are pending when the first is
    # handled (two SIGINTs sent at once would be delivered as one)
    p.send_signal(signal.SIGTERM)
    p.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    _, stderr = p.communicate(timeout=20)
    assert time.monotonic() - t0 < 5
    assert p.returncode == 130, stderr
    m = meta(out)
    assert m["state"] == "aborted"
    assert "aborted by a second interrupt" in stderr
    assert len(Trace.load(out).exits) > 0
