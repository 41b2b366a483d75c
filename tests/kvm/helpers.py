"""Helpers for tests that drive the real `kvmscope` command on the real /dev/kvm."""
import json
import os
import shutil
import subprocess
import sys
import time

KVMSCOPE = shutil.which("kvmscope", path=os.path.dirname(sys.executable)) or shutil.which("kvmscope")


def kvmscope_cmd(*args):
    """argv for the installed `kvmscope` command (falls back to `python -m kvmscope.cli`)."""
    if KVMSCOPE:
        return [KVMSCOPE, *map(str, args)]
    return [sys.executable, "-m", "kvmscope.cli", *map(str, args)]


def kvmscope(*args, timeout=60, check=None):
    """Run `kvmscope ARGS`, return the CompletedProcess (text)."""
    proc = subprocess.run(kvmscope_cmd(*args), capture_output=True, text=True, timeout=timeout)
    if check is not None:
        assert proc.returncode == check, (
            f"kvmscope {' '.join(map(str, args))} exited {proc.returncode}, expected {check}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def start(*args):
    """Start `kvmscope ARGS` in the background."""
    return subprocess.Popen(kvmscope_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_rows(trace_dir, table="exits", min_bytes=4096, timeout=20):
    """Wait until a running recording has flushed some batches of ``table``."""
    path = os.path.join(trace_dir, table + ".arrows")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path) and os.path.getsize(path) > min_bytes:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} did not grow past {min_bytes} bytes in {timeout} s")


def killed_run(trace_dir, min_lock_bytes, timeout=30):
    """Record ``mixed`` on 2 vCPUs into *trace_dir* and kill it (SIGKILL) once
    its lock table has flushed more than *min_lock_bytes*: a real killed run."""
    p = start("run", "mixed", "--vcpus", 2, "-n", 100000000, "-q", "-o", trace_dir)
    try:
        wait_for_rows(trace_dir, "locks", min_lock_bytes, timeout)
    finally:
        p.kill()
        p.wait(timeout=10)


def meta(trace_dir):
    with open(os.path.join(trace_dir, "meta.json")) as f:
        return json.load(f)
