"""Attacks on the core from inside the guest and from outside: the hostile guest,
the sanitizer build, a soak run and stop cycles, all through the real `kvmscope`."""
import os
import signal
import subprocess
import sys

import pytest

from .helpers import kvmscope, meta, start, wait_for_rows

pytestmark = pytest.mark.kvm

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, "bench")


def _validate(trace, capsys):
    """`kvmscope validate TRACE` (in this process: the same code without a second of start-up)."""
    from kvmscope import cli
    capsys.readouterr()
    status = cli.main(["validate", str(trace)])
    out = capsys.readouterr()
    assert status == 0, f"validate {trace} exited {status}: {out.out}{out.err}"


@pytest.mark.parametrize("irqchip,vcpus,seed", [("kernel", 2, 11), ("user", 1, 12)])
def test_hostile_guest_is_refused_everything(tmp_path, capsys, irqchip, vcpus, seed):
    out = tmp_path / "t"
    proc = kvmscope("run", "hostile", "--vcpus", vcpus, "-n", 1500, "--seed", seed, "--irqchip", irqchip,
                    "-q", "--quiet-console", "-o", out, timeout=120)
    m = meta(out)
    statuses = [(v["finished_by_guest"], v["exit_status"]) for v in m["stats"]["vcpus"]]
    assert proc.returncode == 0 and statuses == [(True, 0)] * vcpus, (proc.stderr, statuses, m["messages"])
    assert m["state"] == "complete"
    _validate(out, capsys)


def test_hostile_guest_reaches_every_attack(tmp_path):
    """The trace shows the attacks the guest documents: odd and 8-byte MMIO pieces,
    string input in page-sized exits, accesses across the scratch page's end and the end
    of RAM, hundreds of ports, refused and valid block requests, timer ticks."""
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
    end = 0xd0001000            # the scratch page's end: accesses across it are split there
    assert ((mmio["device"] == "scratch") & (mmio["addr"] + mmio["size"] == end)).any()
    assert ((mmio["device"] == "unassigned") & (mmio["addr"] == end)).any()
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
    """bench/sanitize.py: an ASan+UBSan core runs hostile, disk-bad-dma, mixed, pio-storm and a
    lossless stop with no sanitizer report (about a minute: most of it is the build)."""
    proc = subprocess.run([sys.executable, os.path.join(BENCH, "sanitize.py")], capture_output=True,
                          text=True, timeout=600)
    if proc.returncode == 2:
        pytest.skip(proc.stderr.strip())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "runs clean" in proc.stdout


def test_soak_four_vcpus_rss_bounded(tmp_path):
    """bench/soak.py, short: 4 vCPUs of `mixed` for 10 s (lossless) end on time, lose nothing,
    validate, and the recording process's RSS grows by at most 8 MiB after warm-up: rings,
    guest RAM and the drain's batches are fixed-size, so it stays flat (docs/testing.md)."""
    proc = subprocess.run([sys.executable, os.path.join(BENCH, "soak.py"), "--vcpus", "4", "--duration", "10",
                           "--lossless", "--max-growth-mib", "8", "--grace", "20", "--keep", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "RSS min" in proc.stdout and "no violations" in proc.stdout, proc.stdout


# The command whose stop once hung: every ring full (64 records) and every thread
# waiting for the drain when the stop comes.
STOP_CYCLE = ["run", "mixed", "--vcpus", 4, "-n", 1_000_000_000, "--ring", 64, "--lossless",
              "-q", "--quiet-console"]
STOP_GRACE_S = 5.0


def _threads(pid):
    """Each thread's name and the kernel function it sleeps in (what a hang waits for):
    the soak script's own helper, loaded from bench/."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("kvmscope_bench_soak", os.path.join(BENCH, "soak.py"))
    soak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soak)
    return soak.threads(pid)


def _wait_or_kill(proc, timeout, what):
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        threads = _threads(proc.pid)
        proc.kill()
        proc.wait()
        pytest.fail(f"{what}: still running after {timeout:.1f} s: killed (hang); threads: {threads}")
    finally:
        proc.stdout.close()
        proc.stderr.close()


def test_stop_cycles_by_duration_and_signal(tmp_path, capsys):
    """20 lossless runs with full rings stopped by --duration 0.5 and 10 stopped by SIGINT:
    each ends within a few seconds of the stop, and its trace validates."""
    for i in range(20):
        out = tmp_path / f"d{i}"
        proc = start(*STOP_CYCLE, "--duration", 0.5, "-o", out)
        # from the start: allow 10 s for imports and VM creation, then the stop
        status = _wait_or_kill(proc, 10 + 0.5 + STOP_GRACE_S, f"--duration run {i}")
        assert status == 0, f"--duration run {i} exited {status}"
        assert meta(out)["stop_reason"] == "duration"
        _validate(out, capsys)
    for i in range(10):
        out = tmp_path / f"s{i}"
        proc = start(*STOP_CYCLE, "-o", out)
        wait_for_rows(out, "exits", min_bytes=4096, timeout=20)
        proc.send_signal(signal.SIGINT)
        status = _wait_or_kill(proc, STOP_GRACE_S, f"SIGINT run {i}")
        assert status == 130, f"SIGINT run {i} exited {status}"
        assert meta(out)["stop_reason"] == "interrupted"
        _validate(out, capsys)
