"""Which lock policy matches the real BQL (a glibc pthread mutex)?

Re-executes every shipped recording (traces/) unchanged under each policy of
the re-execution engine (``barging``: glibc's mutex, a free lock goes to
whoever tries first; ``fifo``: a ticket lock) and prints, per trace and
policy: the share of acquisitions whose previous owner is the recorded one,
the total BQL wait and the contended share against the recording, and the
share of the recorded wait during which a later requester held the lock
(``barged``, from the wait anatomy: what a FIFO lock cannot do).

    python bench/whatif_policy.py [TRACE ...]
"""
import glob
import os
import sys

import numpy as np

from kvmscope.analysis import Trace, blame, whatif

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv):
    paths = argv or sorted(os.path.dirname(m) for m in glob.glob(
        os.path.join(ROOT, "traces", "**", "meta.json"), recursive=True))
    print(f"{'trace':28s} {'policy':8s} {'same prev owner':>16s} {'wait err':>9s} "
          f"{'cont err':>9s} {'barged (recorded)':>18s}")
    for p in paths:
        t = Trace.load(p)
        if (t.meta.get("config") or {}).get("source"):
            continue
        rec = whatif.metrics(t)
        a = blame.wait_anatomy(t, "bql")
        barged = 100 * a["barged_ns"].sum() / max(a["wait_ns"].sum(), 1)
        rows = t.locks.sort_values("acquired_ns", kind="stable")
        for policy in ("barging", "fifo"):
            q = whatif.reexecute(t, policy=policy)
            m = whatif.metrics(q)
            qr = q.locks.sort_values("acquired_ns", kind="stable")
            # the same acquisitions in both: match per thread and call site, in order
            same = np.mean(qr["prev_owner"].to_numpy() == rows["prev_owner"].to_numpy()) \
                if len(qr) == len(rows) else float("nan")
            werr = 100 * (m["bql_wait_ns"] - rec["bql_wait_ns"]) / max(rec["bql_wait_ns"], 1)
            cerr = 100 * (m["contended_pct"] - rec["contended_pct"]) / max(rec["contended_pct"],
                                                                           1e-9)
            print(f"{os.path.relpath(p, ROOT):28s} {policy:8s} {100 * same:15.2f}% "
                  f"{werr:+8.1f}% {cerr:+8.1f}% {barged:17.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
