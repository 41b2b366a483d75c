"""Calibrate `kvmscope history` (change points) and the store-aware judgement
of single runs, on synthetic series and on real recordings.

    python bench/history_calibration.py                      # synthetic only
    python bench/history_calibration.py --record --out /tmp/cal   # + real runs (KVM)
    python bench/history_calibration.py --out /tmp/cal       # reuse the runs in /tmp/cal

Synthetic: series of --length runs of log-normal noise (and Student-t noise
with 3 degrees of freedom, heavy tails), with and without a +10% step in
the middle; counts false change points per 100 runs and how often the step
is found within 5 runs of where it is, for several PELT penalties.

Real (`mixed --vcpus 2 -n 100`, one recording at a time): --base runs of
one configuration, then --step runs with `--inject-hold pio:debugport=2us`.
Reports the run-to-run noise per call site, false change points among the
baseline runs, where the real step is found, and single-run comparisons:
`kvmscope diff` on pairs of identical runs against the store-aware
judgement (`history.judge_pair`) with a store of 10 baseline runs (every
5th of the first 50), and pairs of a baseline run and a +2us run.
"""
import argparse
import glob
import math
import os
import subprocess
import sys
import time

import numpy as np

from kvmscope.analysis import Store, Trace
from kvmscope.analysis import history as h

KVMSCOPE = os.path.join(os.path.dirname(sys.executable), "kvmscope")


def synthetic(length, reps, penalties, seed):
    rng = np.random.default_rng(seed)
    print(f"synthetic: {reps} series of {length} runs per case; step +10% at run "
          f"{length // 2}; base 10 us; threshold {h.DEFAULTS['threshold']:.0%}, "
          f"min delta {h.DEFAULTS['min_delta_ns']} ns, min size {h.DEFAULTS['min_size']}")
    print(f"{'noise':<14} {'penalty':>7} {'false CP / 100 runs':>20} {'step found (+-5 runs)':>22}")
    for name, draw in (("lognormal 3%", lambda n: rng.normal(0, 0.03, n)),
                       ("lognormal 5%", lambda n: rng.normal(0, 0.05, n)),
                       ("t3 3%", lambda n: 0.03 * rng.standard_t(3, n) / math.sqrt(3)),
                       ("AR(1) 0.3, 3%", None)):
        for pen in penalties:
            false = found = 0
            for _ in range(reps):
                if draw is None:
                    e = np.zeros(length)
                    z = rng.normal(0, 0.03 * math.sqrt(1 - 0.09), length)
                    for i in range(length):
                        e[i] = (0.3 * e[i - 1] if i else 0) + z[i]
                    noise = e
                else:
                    noise = draw(length)
                v = 10_000 * np.exp(noise)
                false += len(h.change_points(v, penalty=pen))
                step = v * np.r_[np.ones(length // 2), 1.1 * np.ones(length - length // 2)]
                found += any(abs(c["index"] - length // 2) <= 5 and c["change"] > 0
                             for c in h.change_points(step, penalty=pen))
            print(f"{name:<14} {pen:>7g} {100 * false / (reps * length):>20.2f} "
                  f"{found:>15}/{reps}")


def record(out, base, step):
    os.makedirs(out, exist_ok=True)
    t0 = time.monotonic()
    for kind, n, extra in (("base", base, []),
                           ("step", step, ["--inject-hold", "pio:debugport=2us"])):
        for i in range(n):
            d = os.path.join(out, f"{kind}-{i:03d}")
            if not os.path.exists(os.path.join(d, "meta.json")):
                subprocess.run([KVMSCOPE, "run", "mixed", "--vcpus", "2", "-n", "100", "-q",
                                "-o", d, *extra], check=True)
    print(f"recorded in {out} ({time.monotonic() - t0:.0f} s)")


def real(out, penalties):
    base = sorted(glob.glob(os.path.join(out, "base-*")))
    step = sorted(glob.glob(os.path.join(out, "step-*")))
    if len(base) < 40:
        sys.exit(f"{out}: {len(base)} base runs; record at least 40 (--record --base N)")
    store_path = os.path.join(out, "store")
    if not Store.is_store(store_path):
        Store(store_path, create=True).add(base + step)
    s = Store(store_path)
    runs = s.runs()
    nb = sum(1 for n in runs["name"] if n.startswith("base-"))
    print(f"\nreal: {nb} runs of mixed --vcpus 2 -n 100, then {len(runs) - nb} with "
          "--inject-hold pio:debugport=2us, in time order")
    for metric, stat in (("hold", "p50"), ("hold", "p99"), ("hold", "mean"), ("wait", "p50")):
        _, long = h.series(s, metric, stat)
        long = long[long["count"] >= 30]
        base_part = long[long["position"] < nb]
        noise = {cs: round(float(np.std(np.log(np.maximum(g["value"], 1)), ddof=1)), 3)
                 for cs, g in base_part.groupby("callsite")}
        print(f"  {metric} {stat}: run-to-run sd of log value over the baseline runs: {noise}")
        for pen in penalties:
            false, series_n, found = 0, 0, []
            for cs, g in base_part.groupby("callsite"):
                false += len(h.change_points(g["value"].to_numpy(), penalty=pen))
                series_n += len(g)
            for cs, g in long.groupby("callsite"):
                if cs == "pio:debugport":
                    cps = h.change_points(g["value"].to_numpy(), penalty=pen)
                    found = [int(g["position"].iloc[c["index"]]) for c in cps]
            print(f"    penalty {pen:g}: false change points {false} in {series_n} "
                  f"series-runs ({100 * false / max(series_n, 1):.2f} per 100 runs); "
                  f"pio:debugport change points at {found} (step at {nb})")
    r = h.history(s)
    print(f"  kvmscope history {store_path}: exit {r.exit_status}: {r.verdict()}")
    gate(base, step)
    pairs(base, step)


def gate(base, step):
    """The CI gate as the injected runs arrive one by one after the baseline."""
    import tempfile
    s = Store(os.path.join(tempfile.mkdtemp(prefix="kvmscope-gate-"), "store"), create=True)
    s.add(base)
    quiet = h.history(s)
    print(f"\ngate: {len(base)} baseline runs: exit {quiet.exit_status} "
          f"({len(quiet.change_points)} change points)")
    for k, run in enumerate(step, 1):
        s.add(run)
        r = h.history(s)
        why = ("change point" if len(r.regressions) else "") + \
            (" newest run" if len(r.newest_regressed) else "")
        print(f"  +{k} run(s) with +2us at pio:debugport: exit {r.exit_status} ({why.strip() or '-'})")


def pairs(base, step):
    """Single-run comparisons: kvmscope diff vs the store-aware judgement."""
    from kvmscope.analysis import diff
    import tempfile
    tmp = tempfile.mkdtemp(prefix="kvmscope-cal-")
    s = Store(os.path.join(tmp, "store"), create=True)
    # the store: every 5th of the first 50 baseline runs (spread over the
    # recording, as a CI store's runs are spread over days); pairs: the rest
    s.add(base[0:50:5])
    rest = [b for i, b in enumerate(base[:50]) if i % 5]
    same = [(rest[i], rest[i + 1]) for i in range(0, len(rest) - 1, 2)]
    injected = list(zip(base[50:], step))
    print(f"\nsingle runs: store of 10 baseline runs; {len(same)} identical pairs, "
          f"{len(injected)} pairs base vs +2us at pio:debugport (hold p50)")
    for label, group, want in (("identical", same, "false alarms"),
                               ("+2us", injected, "found")):
        d_flag = j_flag = s_flag = 0
        d_rows = []
        for a, b in group:
            ta, tb = Trace.load(a), Trace.load(b)
            r = diff(ta, tb)
            d_flag += bool(r.regressed)
            rs = diff(ta, tb, store=s)             # kvmscope diff A B --store STORE
            if label == "+2us":
                s_flag += bool((rs.regressions["callsite"] == "pio:debugport").any())
            else:
                s_flag += bool(rs.regressed)
            d_rows += [f"{x.callsite} {x.base_stat_ns:.0f}->{x.new_stat_ns:.0f}"
                       for x in r.regressions.itertuples()]
            j = h.judge_pair(ta, tb, s)
            hit = j[j["status"] == "regressed"]
            if label == "+2us":
                j_flag += bool((hit["callsite"] == "pio:debugport").any())
            else:
                j_flag += bool(len(hit))
        print(f"  {label:<10} kvmscope diff (1 vs 1): {d_flag}/{len(group)} {want}"
              + (f" ({'; '.join(d_rows[:4])})" if d_rows and label == "identical" else ""))
        print(f"  {label:<10} kvmscope diff --store (1 vs 1): {s_flag}/{len(group)} {want}")
        print(f"  {label:<10} judged against the store's variation: {j_flag}/{len(group)} {want}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--length", type=int, default=100)
    p.add_argument("--reps", type=int, default=100)
    p.add_argument("--penalty", type=float, action="append")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="directory of the real runs (and their store)")
    p.add_argument("--record", action="store_true", help="record the real runs (KVM)")
    p.add_argument("--base", type=int, default=70)
    p.add_argument("--step", type=int, default=10)
    p.add_argument("--pairs-only", action="store_true",
                   help="with --out: only the single-run comparisons (no synthetic series)")
    p.add_argument("--injected", default="step",
                   help="with --pairs-only: name prefix of the runs with +2us at pio:debugport "
                        "(default step, as --record names them)")
    a = p.parse_args()
    penalties = a.penalty or [2, 3, 4, 6]
    if a.pairs_only and a.out:
        runs = sorted(os.path.join(a.out, d) for d in os.listdir(a.out))
        pairs([r for r in runs if os.path.basename(r).startswith("base-")],
              [r for r in runs if os.path.basename(r).startswith(a.injected + "-")])
        return
    synthetic(a.length, a.reps, penalties, a.seed)
    if a.out:
        if a.record:
            record(a.out, a.base, a.step)
        real(a.out, penalties)


if __name__ == "__main__":
    main()
