"""Benchmark: how long the `kvmscope` command takes to start.

Medians of N interleaved runs of
  help    `kvmscope --help`, start to end;
  run     `kvmscope run pio-storm -n 1 --no-trace -q`, start to end;
  kvmrun  the same command, from exec to its first KVM_RUN ioctl (strace with a
          seccomp filter on execve and ioctl only, so the rest runs untraced;
          skipped without strace);
  first   `kvmscope run pio-storm -n 1 -q -o TMP`: from starting the process to
          the first vCPU exit in the trace (trace and Python share CLOCK_MONOTONIC).

    python bench/startup.py [--repeat 9] [--before DIR] [--save FILE]

The installed `kvmscope` runs. --before DIR also runs another source tree,
interleaved with it and printed beside it: a checkout of the commit before a
change with its core built in place (`git archive REV | tar -x -C DIR`, then
`python setup.py build_ext --inplace` in DIR and the guest binaries copied into
DIR/pyx/guests). --save writes the figures as JSON. Each tree runs once first,
unmeasured, with PYTHONDONTWRITEBYTECODE unset, so that its modules start from
their bytecode caches as in an installed package.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import pyarrow.compute as pc

KVM_RUN = re.compile(r"^\d+\s+([\d.]+) ioctl\(\d+, KVM_RUN")


class Command:
    """Runs `kvmscope ARGS` from the installed package or from a source tree."""

    def __init__(self, tree, tmp):
        os.makedirs(tmp)
        self.env = dict(os.environ)
        # as an installed package: modules compiled once, not at every start
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        if tree is None:
            exe = shutil.which("kvmscope", path=os.path.dirname(sys.executable)) or shutil.which("kvmscope")
            self.prefix = [exe] if exe else [sys.executable, "-m", "kvmscope.cli"]
            return
        # the package layout setup.py makes: kvmscope/ = pyx/, kvmscope/analysis/ = analysis/
        pkg = os.path.join(tmp, "kvmscope")
        os.makedirs(pkg)
        for name in os.listdir(os.path.join(tree, "pyx")):
            os.symlink(os.path.join(os.path.abspath(tree), "pyx", name), os.path.join(pkg, name))
        os.symlink(os.path.join(os.path.abspath(tree), "analysis"), os.path.join(pkg, "analysis"))
        self.env["PYTHONPATH"] = os.path.dirname(pkg)
        self.prefix = [sys.executable, "-m", "kvmscope.cli"]

    def argv(self, *args):
        return [*self.prefix, *args]

    def wall(self, *args):
        t0 = time.monotonic()
        subprocess.run(self.argv(*args), check=True, stdout=subprocess.DEVNULL, env=self.env)
        return time.monotonic() - t0

    def to_first_exit(self, out):
        t0 = time.monotonic_ns()
        subprocess.run(self.argv("run", "pio-storm", "-n", "1", "-q", "-o", out), check=True,
                       stdout=subprocess.DEVNULL, env=self.env)
        # the finished trace's layout (Parquet by default; streams if the
        # conversion was skipped)
        from kvmscope.analysis import Trace
        first = pc.min(Trace.load(out).arrow("exits")["exit_ns"]).as_py()
        return (first - t0) / 1e9

    def to_first_kvm_run(self, log):
        subprocess.run(["strace", "-f", "--seccomp-bpf", "-e", "trace=execve,ioctl", "-ttt", "-o", log,
                        *self.argv("run", "pio-storm", "-n", "1", "--no-trace", "-q")],
                       check=True, stdout=subprocess.DEVNULL, env=self.env)
        with open(log) as f:
            lines = f.readlines()
        start = float(lines[0].split()[1])
        return next(float(m.group(1)) for m in map(KVM_RUN.match, lines) if m) - start


def measure(repeat, trees):
    """Medians per figure for each tree (None: the installed kvmscope)."""
    strace = shutil.which("strace")
    samples = [{"help": [], "run": [], "kvmrun": [], "first": []} for _ in trees]
    with tempfile.TemporaryDirectory() as tmp:
        cmds = [Command(tree, os.path.join(tmp, f"c{j}")) for j, tree in enumerate(trees)]
        for j, cmd in enumerate(cmds):  # warm-up: writes the bytecode caches
            cmd.wall("run", "pio-storm", "-n", "1", "--no-trace", "-q")
            cmd.to_first_exit(os.path.join(tmp, f"warm{j}"))
        for i in range(repeat):          # interleaved: drift in machine load hits every figure alike
            for j, (cmd, s) in enumerate(zip(cmds, samples)):
                s["help"].append(cmd.wall("--help"))
                s["run"].append(cmd.wall("run", "pio-storm", "-n", "1", "--no-trace", "-q"))
                if strace:
                    s["kvmrun"].append(cmd.to_first_kvm_run(os.path.join(tmp, "strace.log")))
                s["first"].append(cmd.to_first_exit(os.path.join(tmp, f"t{i}-{j}")))
    return [{k: statistics.median(v) for k, v in s.items() if v} for s in samples]


LABELS = {"help": "kvmscope --help",
          "run": "run pio-storm -n 1 --no-trace -q: to the end",
          "kvmrun": "  same, to the first KVM_RUN (strace)",
          "first": "run -o DIR: to the first vCPU exit"}


def _cell(figures, key):
    return f"{figures[key]:8.3f}" if key in figures else f"{'-':>8}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=9, metavar="N", help="runs per figure (default 9)")
    ap.add_argument("--before", metavar="DIR", help="source tree to measure beside the installed kvmscope")
    ap.add_argument("--save", metavar="FILE", help="write the figures (seconds) as JSON")
    args = ap.parse_args()
    trees = ([args.before] if args.before else []) + [None]
    figures = measure(args.repeat, trees)
    names = (["before"] if args.before else []) + ["now"]
    if args.save:
        with open(args.save, "w") as f:
            json.dump(dict(zip(names, figures)), f, indent=1)
    print(f"median of {args.repeat} interleaved runs, seconds")
    print(f"{'':46} " + " ".join(f"{n:>8}" for n in names))
    for key, label in LABELS.items():
        print(f"{label:46} " + " ".join(_cell(f, key) for f in figures))


if __name__ == "__main__":
    main()
