"""Calibrate ``kvmscope diff`` on real recordings: how often it flags a
regression between runs of the same configuration (false positives), and
how often it finds a critical section lengthened with ``--inject-hold``
(detection).

Records a pool of same-config runs of pio-storm and, interleaved with them,
runs with an injected hold; then compares disjoint pairs (one run per side)
and disjoint groups (``--group`` runs per side) with the default decision
rule, for each metric and statistic, and prints the flag rates.

    python bench/regress_calibration.py --runs 12 --out /tmp/calib
    python bench/regress_calibration.py --reuse --out /tmp/calib   # re-analyse

Exit status 1 when any same-config comparison of hold times is flagged or
any injected hold of 1 us or more is missed: the gate's promise.
"""

import argparse
import itertools
import os
import subprocess
import sys
import time

from kvmscope.analysis import Trace, diff
from kvmscope.analysis.regress import STATS, parse_ns


def record(path, args, inject=None):
    cmd = [sys.executable, "-m", "kvmscope.cli", "run", "pio-storm",
           "--vcpus", str(args.vcpus), "-n", str(args.iterations), "-q",
           "--quiet-console", "-o", path]
    if inject:
        cmd += ["--inject-hold", f"{args.callsite}={inject}"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="/tmp/kvmscope-calibration",
                    help="directory for the recordings")
    ap.add_argument("--runs", type=int, default=12,
                    help="same-config runs (default 12: 6 pairs, 2 groups "
                         "of 3 vs 3)")
    ap.add_argument("--injected", type=int, default=6,
                    help="runs per injected hold (default 6)")
    ap.add_argument("--inject", action="append",
                    help="hold to inject, repeatable (default 1us and 2us)")
    ap.add_argument("--callsite", default="pio:debugport")
    ap.add_argument("--group", type=int, default=3,
                    help="runs per side in group comparisons (default 3)")
    ap.add_argument("--vcpus", type=int, default=2)
    ap.add_argument("--iterations", "-n", type=int, default=20000)
    ap.add_argument("--min-delta", default="100ns",
                    help="diff --min-delta (default 100ns; 0 shows what "
                         "the rest of the rule does alone)")
    ap.add_argument("--threshold", default="10%",
                    help="diff --threshold (default 10%%)")
    ap.add_argument("--reuse", action="store_true",
                    help="analyse the recordings already in --out")
    args = ap.parse_args(argv)
    injects = args.inject or ["1us", "2us"]
    os.makedirs(args.out, exist_ok=True)

    base = [os.path.join(args.out, f"base-{i:02d}") for i in range(args.runs)]
    inj = {x: [os.path.join(args.out, f"inject-{x}-{i:02d}")
               for i in range(args.injected)] for x in injects}
    if not args.reuse:
        t0 = time.monotonic()
        # Interleave, so that drift of the machine over time lands in the
        # same-config comparisons as much as in the injected ones.
        for i in range(max(args.runs, args.injected)):
            if i < args.runs:
                record(base[i], args)
            for x in injects:
                if i < args.injected:
                    record(inj[x][i], args, x)
        print(f"recorded {args.runs + args.injected * len(injects)} runs in "
              f"{time.monotonic() - t0:.0f} s")
    load = {p: Trace.load(p) for p in base + sum(inj.values(), [])}

    def side(paths):
        return [load[p] for p in paths]
    g = args.group
    cases = []      # (kind, label, baseline runs, candidate runs)
    for a, b in zip(base[0::2], base[1::2]):
        cases.append(("same", "1 vs 1", side([a]), side([b])))
    for i in range(0, args.runs - 2 * g + 1, 2 * g):
        cases.append(("same", f"{g} vs {g}", side(base[i:i + g]),
                      side(base[i + g:i + 2 * g])))
    for x in injects:
        for i, p in enumerate(inj[x]):
            cases.append((f"+{x}", "1 vs 1", side([base[i % args.runs]]),
                          side([p])))
        for i in range(0, args.injected - g + 1, g):
            j = (i // g * g) % max(args.runs - g + 1, 1)
            cases.append((f"+{x}", f"{g} vs {g}", side(base[j:j + g]),
                          side(inj[x][i:i + g])))

    print(f"{'case':<8} {'runs':<7} {'metric':<6} "
          + " ".join(f"{s:>7}" for s in STATS) + "   (flagged / compared)")
    print(f"threshold {args.threshold}, min delta {args.min_delta}; same: "
          "any row flagged; +X: the injected call site flagged")
    failed = False
    key = lambda c: (c[0], c[1])
    for (kind, label), group in itertools.groupby(cases, key):
        group = list(group)
        for metric in ("hold", "wait"):
            cells = []
            for stat in STATS:
                flagged = judged = 0
                for _, _, b, n in group:
                    r = diff(b, n, metric=metric, stat=stat,
                             threshold=args.threshold,
                             min_delta_ns=args.min_delta)
                    t = r.table
                    site = t[t["callsite"] == args.callsite]
                    if site.empty or site["status"].iloc[0] == "insufficient":
                        continue
                    judged += 1
                    # Same config: any flagged row is a false positive.
                    # Injected: the injected call site must be named.
                    flagged += (r.regressed if kind == "same"
                                else site["status"].iloc[0] == "regressed")
                cells.append(f"{flagged}/{judged}")
                if metric == "hold" and judged:
                    if kind == "same" and flagged:
                        failed = True
                    if (kind != "same" and parse_ns(kind[1:]) >= 1000
                            and flagged < judged):
                        failed = True
            print(f"{kind:<8} {label:<7} {metric:<6} "
                  + " ".join(f"{c:>7}" for c in cells))
    print("OK: no false positive on hold, every >= 1us injection found"
          if not failed else "FAILED: see the hold rows above")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
