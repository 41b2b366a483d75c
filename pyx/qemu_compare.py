"""The BQL side by side: the same workload on kvmscope's VMM and on QEMU
(docs/qemu.md, "Side by side").

    python -m kvmscope.qemu_compare traces/pio-storm-2vcpu traces/qemu-pio-storm-2vcpu

prints, per trace, the figures that say what the BQL costs each exit:
acquisitions and hold time per exit, the hand-off rate, the contended
share and the share of the vCPUs' time spent waiting for the BQL, over the
guest's run (BQL acquisitions from the first vCPU exit to the last).
"""

import argparse
import json
import sys

from .errors import KvmscopeError

#: Figure name -> what it is (the table's legend and the JSON keys).
FIGURES = {
    "exits": "vCPU exits",
    "acquisitions": "BQL acquisitions",
    "acq_per_exit": "BQL acquisitions per exit",
    "hold_per_exit_ns": "BQL hold time per exit (total hold / exits)",
    "hold_p50_ns": "median BQL hold",
    "handoff_pct": "hand-off rate: acquisitions that took the BQL from another thread, %",
    "contended_pct": "acquisitions that had to wait, %",
    "vcpu_wait_share_pct": "share of the vCPUs' time spent waiting for the BQL (contended "
                           "acquisitions), %",
    "line_cost_ns": "QEMU log: mean cost of writing one trace line (in every wait and hold)",
    "resolution_ns": "timestamp resolution",
}


def bql_figures(trace):
    """The BQL figures of one trace (see :data:`FIGURES`).

    Parameters
    ----------
    trace : kvmscope.analysis.Trace or str

    Returns
    -------
    dict
        Raw values (durations in ns); ``source`` is ``kvmscope`` or the QEMU
        version of an imported log.

    Examples
    --------
    >>> bql_figures("traces/qemu-pio-storm-2vcpu")["acq_per_exit"]   # doctest: +SKIP
    1.0
    """
    import numpy as np
    from .analysis import Trace
    from .traceformat import clock_resolution_ns
    t = trace if isinstance(trace, Trace) else Trace.load(trace)
    # the guest's run: from the first exit to the last (not QEMU's machine
    # set-up, during which its main thread holds the BQL for milliseconds)
    lo, hi = (t.exits["exit_ns"].min(), t.exits["exit_ns"].max()) if len(t.exits) else (0, -1)
    locks = t.locks[(t.locks["lock"].astype(str) == "bql") & (t.locks["acquired_ns"] >= lo)
                    & (t.locks["acquired_ns"] <= hi)]
    exits = len(t.exits)
    vcpus = set(t.threads.loc[t.threads["role"].astype(str) == "vcpu", "thread"].tolist())
    vl = locks[locks["thread"].isin(vcpus)]
    span = 0
    for _, g in t.exits.groupby("thread", sort=False):
        span += int(g["exit_ns"].max() - g["exit_ns"].min())
    n = len(locks)
    q = t.meta.get("qemu")
    return {
        "trace": t.path,
        "source": f"QEMU: {q.get('version', 'unknown')}" if isinstance(q, dict) else "kvmscope",
        "guest": (t.meta.get("config") or {}).get("guest"),
        "vcpus": len(vcpus),
        "exits": exits,
        "acquisitions": n,
        "acq_per_exit": n / exits if exits else float("nan"),
        "hold_per_exit_ns": float(locks["hold_ns"].sum()) / exits if exits else float("nan"),
        "hold_p50_ns": float(np.median(locks["hold_ns"])) if n else float("nan"),
        "handoff_pct": 100.0 * float(locks["handoff"].sum()) / n if n else float("nan"),
        "contended_pct": 100.0 * float(locks["contended"].sum()) / n if n else float("nan"),
        "vcpu_wait_share_pct": (100.0 * float(vl.loc[vl["contended"], "wait_ns"].sum()) / span
                                if span else float("nan")),
        "line_cost_ns": q.get("line_cost_ns") if isinstance(q, dict) else None,
        "resolution_ns": clock_resolution_ns(t.meta),
    }


def _text(rows, fmt):
    from .analysis.render import duration_text, markdown_table, text_table
    heads = ["figure"] + [r["trace"] for r in rows]
    lines = [["source"] + [r["source"] for r in rows],
             ["guest, vCPUs"] + [f"{r['guest']}, {r['vcpus']}" for r in rows]]
    for key in FIGURES:
        cells = []
        for r in rows:
            v = r[key]
            if v is None:
                cells.append("-")
            elif key == "resolution_ns":
                cells.append(duration_text(v, v))
            elif key == "line_cost_ns":
                cells.append(duration_text(v, 100))       # a mean of many microseconds
            elif key.endswith("_ns"):
                cells.append(duration_text(v, r["resolution_ns"]))
            elif key.endswith("_pct"):
                cells.append(f"{v:.1f}%")
            elif isinstance(v, float):
                cells.append(f"{v:.3f}")
            else:
                cells.append(str(v))
        lines.append([key] + cells)
    right = set(range(1, len(heads)))
    if fmt == "markdown":
        return markdown_table(heads, lines, right)
    return text_table(heads, lines, right)


def main(argv=None):
    """``python -m kvmscope.qemu_compare TRACE...``: 0, or 2 for an unreadable trace."""
    p = argparse.ArgumentParser(prog="python -m kvmscope.qemu_compare",
                                description="BQL figures per exit of traces side by side")
    p.add_argument("traces", nargs="+", metavar="TRACE")
    p.add_argument("--format", choices=("text", "markdown", "json"), default="text")
    args = p.parse_args(argv)
    try:
        rows = [bql_figures(path) for path in args.traces]
    except KvmscopeError as e:
        print(f"kvmscope.qemu_compare: error: {e}", file=sys.stderr)
        return 2
    if args.format == "json":
        print(json.dumps(rows, indent=1))
    else:
        sys.stdout.write(_text(rows, args.format))
        if args.format == "text":
            sys.stdout.write("\n" + "\n".join(f"  {k}: {v}" for k, v in FIGURES.items()) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
