"""How well does re-execution predict reality?  For each experiment: record a
baseline, predict the change from it (kvmscope.analysis.whatif), record the
real run with the change, and compare total BQL wait, contended share and
exits/s, predicted against measured.

Experiments, on ``mixed`` and ``pio-storm`` (2 vCPUs): ``--inject-hold`` at
call sites x sizes (predicted with ``add_hold``), ``--lockless`` for each
device the guest uses, and the vCPU count 1 -> 2 (a 1-vCPU baseline) and
2 -> 4 (more vCPUs than this host's CPUs).

    python bench/whatif_accuracy.py [--guests mixed,pio-storm] [--sizes 1us,5us,20us]
                                    [--repeat N] [--n GUEST=N ...] [--out DIR [--reuse]]

With ``--repeat N`` every experiment records N baselines and N real runs,
alternating; the prediction is the median of the N predictions (one from
each baseline), the measured figure the median of the N real runs.  Each
prediction is made twice: with the model's CPU sharing (the recording
host's CPUs) and without (``cpus=0``), to show what that part of the model
buys.

Needs /dev/kvm; runs one recording at a time.  Prints one row per
experiment and figure, then the median and largest absolute error.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
KVMSCOPE = os.path.join(os.path.dirname(sys.executable), "kvmscope")

#: Per guest: iterations, call sites to lengthen, devices to take off the BQL.
SETUPS = {
    "mixed": {"n": 200, "sites": ["pio:debugport", "pio:blk", "main:dispatch"],
              "devices": ["debugport", "blk", "timerdev"]},
    "pio-storm": {"n": 20000, "sites": ["pio:debugport", "main:dispatch"],
                  "devices": ["debugport"]},
}
FIGURES = ("bql_wait_ns", "contended_pct", "exits_per_s")


REUSE = False


def record(guest, n, out, vcpus=2, extra=()):
    if REUSE and os.path.exists(os.path.join(out, "meta.json")):
        return out
    cmd = [KVMSCOPE, "run", guest, "--vcpus", str(vcpus), "-n", str(n), "--lossless", "-q",
           "--quiet-console", "--force", "-o", out, *extra]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return out


def ns(text):
    from kvmscope import units
    return int(units.parse_duration(text, "ns", "size"))


def experiments(guest, sizes):
    s = SETUPS[guest]
    out = []
    for site in s["sites"]:
        for size in sizes:
            out.append((f"hold {site} +{size}", 2, ["--inject-hold", f"{site}={size}"],
                        {"add_hold": {site: ns(size)}}))
    for dev in s["devices"]:
        out.append((f"lockless {dev}", 2, ["--lockless", dev], {"lockless": [dev]}))
    out.append(("vcpus 1 -> 2", 1, [], {"vcpus": 2}))
    out.append(("vcpus 2 -> 4", 2, [], {"vcpus": 4}))
    # the reference: the same configuration recorded twice, "predicted" by
    # re-executing the first unchanged: the host's run-to-run variation
    out.append(("same run again (noise)", 2, [], {}))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--guests", default="mixed,pio-storm")
    p.add_argument("--sizes", default="1us,5us,20us")
    p.add_argument("--repeat", type=int, default=1,
                   help="baseline/real pairs per experiment (errors of the median figures)")
    p.add_argument("--n", action="append", default=[], metavar="GUEST=N",
                   help="iterations of a guest's runs (default mixed=200, pio-storm=20000)")
    p.add_argument("--out", help="keep the recordings here")
    p.add_argument("--reuse", action="store_true",
                   help="with --out: predict from the recordings already there instead of "
                        "recording again (model versions compared on the same runs)")
    p.add_argument("--json", help="write the rows as JSON to this file")
    a = p.parse_args(argv)
    if a.reuse and not a.out:
        p.error("--reuse needs --out DIR")
    global REUSE
    REUSE = a.reuse
    from kvmscope.analysis import Trace, whatif
    from kvmscope.errors import KvmscopeError
    iters = {g: s["n"] for g, s in SETUPS.items()}
    for item in a.n:
        g, _, v = item.partition("=")
        iters[g] = int(v)
    work = a.out or tempfile.mkdtemp(prefix="whatif-accuracy-")
    rows = []
    refused = []        # (guest, experiment, repeat, reason): a baseline the model would not take
    try:
        for guest in a.guests.split(","):
            n = iters[guest]
            for name, base_vcpus, run_opts, change in experiments(guest, a.sizes.split(",")):
                pred, flat, meas = ({f: [] for f in FIGURES} for _ in range(3))
                for k in range(a.repeat):
                    tag = f"{guest}-{name.replace(' ', '_').replace('>', '').replace(':', '')}-{k}"
                    base = record(guest, n, os.path.join(work, tag + "-base"), base_vcpus)
                    real = record(guest, n, os.path.join(work, tag + "-real"),
                                  change.get("vcpus", base_vcpus), run_opts)
                    bt = Trace.load(base)
                    try:
                        mp = whatif.metrics(whatif.reexecute(bt, **change))
                        m0 = whatif.metrics(whatif.reexecute(bt, cpus=0, **change))
                    except KvmscopeError as e:
                        # a refusal is a result too: counted and shown, not a crash
                        refused.append((guest, name, k, str(e)))
                        print(f"{guest:10s} {name:24s} baseline {k} refused: {e}", flush=True)
                        continue
                    mm = whatif.metrics(Trace.load(real))
                    for f in FIGURES:
                        pred[f].append(mp[f])
                        flat[f].append(m0[f])
                        meas[f].append(mm[f])
                if not meas[FIGURES[0]]:
                    continue
                for f in FIGURES:
                    x, x0, y = (float(np.median(v[f])) for v in (pred, flat, meas))
                    err = (x - y) / y if y else float("nan")
                    err0 = (x0 - y) / y if y else float("nan")
                    # run-to-run spread of the real runs: half their range
                    spread = ((max(meas[f]) - min(meas[f])) / 2 / y
                              if y and len(meas[f]) > 1 else float("nan"))
                    rows.append({"guest": guest, "experiment": name, "figure": f,
                                 "predicted": x, "measured": y, "error": err,
                                 "predicted_no_cpu": x0, "error_no_cpu": err0,
                                 "spread": spread,
                                 "measured_runs": meas[f], "predicted_runs": pred[f]})
                    print(f"{guest:10s} {name:24s} {f:14s} predicted {x:11.4g} measured {y:11.4g} "
                          f"error {100 * err:+7.1f}%  spread {100 * spread:5.1f}%   "
                          f"(no CPU sharing {100 * err0:+7.1f}%)", flush=True)
    finally:
        if not a.out:
            shutil.rmtree(work, ignore_errors=True)
    for key, what in (("error", "with CPU sharing"), ("error_no_cpu", "without CPU sharing")):
        ok = [r for r in rows if r[key] == r[key]]
        errs = np.array([abs(r[key]) for r in ok])
        over = [r for r in ok if abs(r[key]) > 0.3]
        noisy = sum(1 for r in over if abs(r[key]) <= r["spread"])
        print(f"\n{len(ok)} figures {what}: median |error| {100 * np.median(errs):.1f}%, "
              f"largest {100 * errs.max():.1f}%; {len(over)} over 30%, {noisy} of them within "
              f"the real runs' spread")
        for f in FIGURES:
            e = np.array([abs(r[key]) for r in rows if r["figure"] == f and r[key] == r[key]])
            print(f"  {f:14s} median |error| {100 * np.median(e):.1f}%, "
                  f"largest {100 * e.max():.1f}%")
    print(f"\n{len(refused)} baselines refused by the model"
          + "".join(f"\n  {g} {n} #{k}: {why}" for g, n, k, why in refused))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
