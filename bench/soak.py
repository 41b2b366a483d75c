"""Soak and stop-cycle runs of the real `kvmscope` command.

    python bench/soak.py --vcpus 4 --duration 60          # one long recording of `mixed`
    python bench/soak.py --stop-cycles 30 --duration 2    # 30 lossless runs stopped by --duration

Soak: records `mixed` on N vCPUs for a duration, samples the recording
process's resident set (VmRSS in /proc/PID/status) every second, and prints
RSS min / max / growth after warm-up, exits/s and records written; then
validates the trace with `kvmscope validate`. It fails (exit status 1) on a run
that does not end within --grace seconds of its duration (a deadlock), a
failed run or validation, lost records, or RSS growth after warm-up above
--max-growth-mib.

Stop cycles: the command known to stress the stop path with a full ring,
`kvmscope run mixed --vcpus 4 -n 1000000000 --ring 64 --lossless --duration D`,
N times; each must end within --grace seconds of the stop and validate.
See docs/testing.md for the figures and the bound.
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

WARMUP_S = 3.0                  # RSS growth is measured from the first sample after this


def kvmscope_cmd(*args):
    """argv of the `kvmscope` next to this python, else `python -m kvmscope.cli`."""
    exe = shutil.which("kvmscope", path=os.path.dirname(sys.executable))
    return [exe, *map(str, args)] if exe else [sys.executable, "-m", "kvmscope.cli", *map(str, args)]


def rss_kib(pid):
    """VmRSS of a process in KiB, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return None


def threads(pid):
    """Each thread's name and the kernel function it sleeps in (what a hang waits for)."""
    rows = []
    for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as c, open(f"/proc/{pid}/task/{tid}/wchan") as w:
                rows.append(f"{c.read().strip()}:{w.read().strip() or 'running'}")
        except OSError:
            pass
    return " ".join(rows)


def record(args, out, stop_after, grace, signal_at=None, sample=False):
    """Run `kvmscope run ARGS -o OUT`; optionally SIGINT it after ``signal_at`` seconds.

    Returns (exit status or None when it had to be killed, seconds from the stop
    (the end of --duration, or the signal) to the process's exit, [(t, rss KiB)], stderr).
    """
    proc = subprocess.Popen(kvmscope_cmd("run", *args, "-q", "--quiet-console", "-o", out),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    samples = []
    signalled = None
    deadline = t0 + stop_after + grace
    next_sample = t0 + 1.0              # the first second is python starting up
    while proc.poll() is None and time.monotonic() < deadline:
        now = time.monotonic()
        if signal_at is not None and signalled is None and now - t0 >= signal_at:
            proc.send_signal(signal.SIGINT)
            signalled = now
            deadline = now + grace
        if sample and now >= next_sample:
            r = rss_kib(proc.pid)
            if r is not None:
                samples.append((now - t0, r))
            next_sample += 1.0
        time.sleep(0.02)
    status = proc.poll()
    end = time.monotonic()
    if status is None:
        stderr_note = "threads at the kill: " + threads(proc.pid)
        proc.kill()
        proc.wait()
        return None, end - (signalled or t0 + stop_after), samples, stderr_note
    stderr = proc.stderr.read()
    proc.stderr.close()
    stop = signalled if signalled is not None else t0 + stop_after
    if signalled is None:
        # --duration counts from the start of the vCPUs (meta.json start_ns, CLOCK_MONOTONIC)
        try:
            with open(os.path.join(out, "meta.json")) as f:
                stop = json.load(f)["start_ns"] / 1e9 + stop_after
        except (OSError, ValueError, KeyError):
            pass
    return status, end - stop, samples, stderr


def validate(trace):
    proc = subprocess.run(kvmscope_cmd("validate", trace), capture_output=True, text=True, timeout=600)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def soak(opts, workdir):
    out = os.path.join(workdir, "soak")
    args = ["mixed", "--vcpus", opts.vcpus, "-n", 1_000_000_000, "--duration", opts.duration,
            "--ring", opts.ring]
    if opts.lossless:
        args.append("--lossless")
    print(f"soak: kvmscope run {' '.join(map(str, args))} -q --quiet-console -o {out}")
    status, late, samples, stderr = record(args, out, opts.duration, opts.grace, sample=True)
    problems = []
    if status is None:
        problems.append(f"still running {opts.grace:.0f} s after its --duration {opts.duration} s: killed "
                        f"(deadlock); {stderr}")
    elif status != 0:
        problems.append(f"kvmscope run exited {status}: {stderr.strip()}")
    # While recording (to the end of --duration): rings, guest RAM and the
    # drain's batches are fixed-size.  After it, the trace is converted to
    # Parquet row group by row group: its peak is bounded on its own.
    rss = [r for t, r in samples if t <= opts.duration]
    after = [r for t, r in samples if t > opts.duration]
    warm = [r for t, r in samples if WARMUP_S <= t <= opts.duration]
    growth = (warm[-1] - warm[0]) / 1024 if len(warm) >= 2 else 0.0
    if rss:
        print(f"soak: RSS min {min(rss) / 1024:.1f} MiB, max {max(rss) / 1024:.1f} MiB, "
              f"growth after {WARMUP_S:.0f} s {growth:+.1f} MiB ({len(rss)} samples, one a second, "
              "while recording)")
    if after:
        print(f"soak: after the recording (conversion to Parquet): RSS peak {max(after) / 1024:.1f} MiB "
              f"({len(after)} samples)")
        if max(after) / 1024 > opts.max_convert_mib:
            problems.append(f"RSS peaked at {max(after) / 1024:.1f} MiB while converting "
                            f"(bound {opts.max_convert_mib} MiB)")
    if growth > opts.max_growth_mib:
        problems.append(f"RSS grew {growth:.1f} MiB after warm-up (bound {opts.max_growth_mib} MiB)")
    try:
        with open(os.path.join(out, "meta.json")) as f:
            meta = json.load(f)
        st = meta["stats"]
        exits = sum(v["exits"] for v in st["vcpus"])
        run_s = max(v["run_ns"] for v in st["vcpus"]) / 1e9
        written = sum(r["written"] for r in meta["records"].values())
        lost = sum(r["lost"] for r in meta["records"].values())
        print(f"soak: {exits} exits in {run_s:.1f} s ({exits / run_s:,.0f} exits/s), AIO {st['aio']['completed']} "
              f"requests, {written} records written, {lost} lost; stopped {late:.2f} s after --duration")
        if lost:
            problems.append(f"{lost} records lost: use --lossless or a larger --ring")
    except (OSError, ValueError, KeyError) as e:
        problems.append(f"no complete meta.json: {e}")
    if status is not None:
        rc, text = validate(out)
        print(f"soak: validate: {text.splitlines()[-1] if text else ''}")
        if rc != 0:
            problems.append(f"validate exited {rc}: {text}")
    return problems


def stop_cycles(opts, workdir):
    problems = []
    times = []
    args = ["mixed", "--vcpus", 4, "-n", 1_000_000_000, "--ring", 64, "--lossless", "--duration", opts.duration]
    print(f"stop cycles: {opts.stop_cycles} x kvmscope run {' '.join(map(str, args))} -q --quiet-console")
    for i in range(opts.stop_cycles):
        out = os.path.join(workdir, f"cycle{i}")
        status, late, _, stderr = record(args, out, opts.duration, opts.grace)
        if status is None:
            problems.append(f"run {i}: still running {opts.grace:.0f} s after --duration: killed (hang); {stderr}")
            break
        if status != 0:
            problems.append(f"run {i}: exited {status}: {stderr.strip()}")
            break
        rc, text = validate(out)
        if rc != 0:
            problems.append(f"run {i}: validate exited {rc}: {text}")
            break
        times.append(late)
        shutil.rmtree(out, ignore_errors=True)
    if times:
        print(f"stop cycles: {len(times)} ended and validated; end after the stop: "
              f"median {sorted(times)[len(times) // 2]:.2f} s, max {max(times):.2f} s")
    return problems


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vcpus", type=int, default=4)
    p.add_argument("--duration", type=float, default=60.0, help="seconds per run (default 60)")
    p.add_argument("--ring", type=int, default=65536, help="records per thread ring (default 65536)")
    p.add_argument("--lossless", action="store_true", help="record with --lossless")
    p.add_argument("--grace", type=float, default=30.0,
                   help="seconds a run may take past its stop before it counts as hung (default 30)")
    p.add_argument("--max-growth-mib", type=float, default=8.0,
                   help="largest RSS growth after warm-up that passes (default 8)")
    p.add_argument("--max-convert-mib", type=float, default=384.0,
                   help="largest RSS after the recording, while the trace is converted to "
                        "Parquet, that passes (default 384)")
    p.add_argument("--stop-cycles", type=int, default=0, metavar="N",
                   help="instead of a soak, N lossless --ring 64 runs of --duration each")
    p.add_argument("--keep", metavar="DIR", help="write the traces into DIR and keep them")
    opts = p.parse_args(argv)
    if opts.vcpus < 1 or opts.duration <= 0 or opts.grace <= 0 or opts.stop_cycles < 0:
        print("soak: --vcpus, --duration and --grace must be positive", file=sys.stderr)
        return 2
    workdir = os.path.abspath(opts.keep) if opts.keep else tempfile.mkdtemp(prefix="kvmscope-soak-")
    os.makedirs(workdir, exist_ok=True)
    try:
        problems = stop_cycles(opts, workdir) if opts.stop_cycles else soak(opts, workdir)
    finally:
        if not opts.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    for problem in problems:
        print(f"soak: FAIL: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
