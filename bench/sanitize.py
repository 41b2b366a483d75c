"""Build the core with AddressSanitizer and UBSan into a temporary directory and run
guests that attack it through the kvmscope CLI; fail on any sanitizer report.

    python bench/sanitize.py                 # build, run, clean up
    python bench/sanitize.py --keep DIR      # build into DIR and keep it (reused when present)

Exit status: 0 clean, 1 a sanitizer report, a crash, a hang, a wrong exit
status or a failed build (the finding is printed), 2 no sanitizer runtime here.
See docs/testing.md.
"""
import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ["setup.py", "pyproject.toml", "README.md", "pyx", "analysis"]
SKIP = shutil.ignore_patterns("*.so", "_core.c", "*.bin", "*.o", "__pycache__", "build")

# (name, kvmscope run arguments, expected exit status)
RUNS = [
    ("hostile", ["hostile", "--vcpus", "2", "-n", "2000", "--seed", "7"], 0),
    ("hostile-user-irqchip", ["hostile", "-n", "1000", "--seed", "8", "--irqchip", "user"], 0),
    ("disk-bad-dma", ["disk-bad-dma"], 0),
    ("mixed", ["mixed", "--vcpus", "2"], 0),
    ("pio-storm", ["pio-storm", "--vcpus", "2", "-n", "20000"], 0),
    # the stop path with every ring full and every thread waiting for the drain
    ("mixed-lossless-stop", ["mixed", "--vcpus", "4", "-n", "1000000000", "--ring", "64", "--lossless",
                             "--duration", "1"], 0),
]
RUN_TIMEOUT_S = 120

# what ASan, UBSan and LeakSanitizer print when they find something
REPORT = re.compile(r"ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|"
                    r"SUMMARY: (Address|UndefinedBehavior)Sanitizer|AddressSanitizer:DEADLYSIGNAL")


class Unavailable(Exception):
    """The sanitizer build cannot be made on this machine."""


class BuildFailed(Exception):
    """The sources do not build with the sanitizers."""


def sanitizer_runtime():
    """Path of the compiler's libasan.so, which must be preloaded into python."""
    cc = os.environ.get("CC", "gcc").split()[0]
    try:
        path = subprocess.run([cc, "-print-file-name=libasan.so"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as e:
        raise Unavailable(f"cannot ask the C compiler {cc!r} for libasan.so: {e}") from None
    if not os.path.isabs(path) or not os.path.exists(path):
        raise Unavailable(f"{cc} has no libasan.so (install the compiler's ASan runtime, e.g. libasan8)")
    return path


def build(workdir):
    """Build a sanitized kvmscope under ``workdir``; return the directory to put on PYTHONPATH."""
    lib = os.path.join(workdir, "lib")
    if glob.glob(os.path.join(lib, "kvmscope", "_core*.so")):
        return lib
    src = os.path.join(workdir, "src")
    shutil.rmtree(src, ignore_errors=True)
    os.makedirs(src)
    for name in SOURCES:
        path = os.path.join(ROOT, name)
        if os.path.isdir(path):
            shutil.copytree(path, os.path.join(src, name), ignore=SKIP)
        else:
            shutil.copy2(path, src)
    env = dict(os.environ, KVMSCOPE_SANITIZE="1")
    try:
        import Cython  # noqa: F401  (a development venv builds offline with what it has)
        cmd = [sys.executable, "setup.py", "-q", "build", "--build-base", os.path.join(workdir, "build")]
    except ImportError:
        # an install without Cython (pip install '.[test]'): pip gets the build requirements
        cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", os.path.join(workdir, "wheel"), "."]
    proc = subprocess.run(cmd, cwd=src, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildFailed(f"the sanitizer build failed: {' '.join(cmd)} exited {proc.returncode}:\n"
                          + proc.stdout[-4000:] + proc.stderr[-4000:])
    built = glob.glob(os.path.join(workdir, "build", "lib*"))
    if built:
        shutil.copytree(built[0], lib)
    else:
        with zipfile.ZipFile(glob.glob(os.path.join(workdir, "wheel", "kvmscope-*.whl"))[0]) as z:
            z.extractall(lib)
    core = glob.glob(os.path.join(lib, "kvmscope", "_core*.so"))
    with open(core[0], "rb") as f:
        if b"__asan_init" not in f.read():
            raise Unavailable(f"{core[0]} was built without AddressSanitizer")
    return lib


def sanitized_env(lib, runtime):
    env = dict(os.environ)
    env.update(PYTHONPATH=lib + os.pathsep + env.get("PYTHONPATH", ""), LD_PRELOAD=runtime,
               ASAN_OPTIONS="detect_leaks=0",      # CPython keeps objects alive at exit by design
               UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    return env


def kvmscope(env, args, timeout):
    return subprocess.run([sys.executable, "-m", "kvmscope.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def run_all(lib, runtime, workdir):
    """Run every guest of RUNS under the sanitizers; return the findings (strings)."""
    env = sanitized_env(lib, runtime)
    where = subprocess.run([sys.executable, "-c", "import kvmscope._core as c; print(c.__file__)"],
                           env=env, capture_output=True, text=True, timeout=60)
    if where.returncode != 0 or not where.stdout.strip().startswith(lib):
        return [f"the sanitized core is not the one imported: {where.stdout.strip()} {where.stderr.strip()}"]
    findings = []
    for name, args, expected in RUNS:
        trace = os.path.join(workdir, "trace-" + name)
        shutil.rmtree(trace, ignore_errors=True)
        t0 = time.monotonic()
        try:
            proc = kvmscope(env, ["run", *args, "-q", "--quiet-console", "-o", trace], RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            findings.append(f"{name}: still running after {RUN_TIMEOUT_S} s (hang)")
            print(f"  {name:22s} HANG")
            continue
        took = time.monotonic() - t0
        report = [line for line in proc.stderr.splitlines() if REPORT.search(line)]
        problem = None
        if report:
            problem = f"{name}: sanitizer report:\n{proc.stderr.strip()}"
        elif proc.returncode != expected:
            problem = f"{name}: exit status {proc.returncode}, expected {expected}:\n{proc.stderr.strip()}"
        else:
            val = kvmscope(env, ["validate", trace], RUN_TIMEOUT_S)
            if val.returncode != 0 or REPORT.search(val.stderr):
                problem = f"{name}: validate exited {val.returncode}:\n{val.stdout.strip()}\n{val.stderr.strip()}"
        print(f"  {name:22s} {took:5.1f} s  {'FAIL' if problem else 'clean'}")
        if problem:
            findings.append(problem)
    return findings


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keep", metavar="DIR", help="build into DIR and keep it (an existing build is reused)")
    args = p.parse_args(argv)
    workdir = os.path.abspath(args.keep) if args.keep else tempfile.mkdtemp(prefix="kvmscope-sanitize-")
    try:
        try:
            runtime = sanitizer_runtime()
            t0 = time.monotonic()
            lib = build(workdir)
        except Unavailable as e:
            print(f"sanitize: {e}", file=sys.stderr)
            return 2
        except BuildFailed as e:
            print(f"sanitize: FINDING: {e}", file=sys.stderr)
            return 1
        print(f"sanitize: ASan+UBSan core in {lib} ({time.monotonic() - t0:.0f} s); runs:")
        findings = run_all(lib, runtime, workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if findings:
        for f in findings:
            print(f"sanitize: FINDING: {f}", file=sys.stderr)
        return 1
    print(f"sanitize: {len(RUNS)} runs clean")
    return 0


if __name__ == "__main__":
    sys.exit(main())
