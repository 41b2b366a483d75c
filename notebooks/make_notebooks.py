"""Writes the investigation notebooks (committed without outputs). Run after editing the cells here."""
import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook


def notebook(cells, path):
    nb = new_notebook(cells=[new_markdown_cell(c[3:]) if c.startswith("md:") else new_code_cell(c.strip())
                             for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


BQL = [
    """md:# Where does the BQL go?

An investigation of one recording of the `mixed` guest on 2 vCPUs: the vCPUs do
block I/O and port writes, the main loop runs timer callbacks and AIO
completions, and all of them need the global lock (the BQL). Which call sites
hold it, who waits behind whom, and what does one contention burst look like?

The trace ships in `traces/mixed-2vcpu` (recorded with
`kvmscope run mixed --vcpus 2 -n 400`); set `KVMSCOPE_TRACE` to look at another.""",
    """
import io
import os
import numpy as np
import pandas as pd
from IPython.display import Image, display
from kvmscope.analysis import Trace, plot


def show(fig):
    # kvmscope draws without pyplot: show its figures as PNG
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    display(Image(buf.getvalue()))

TRACES = os.environ.get("KVMSCOPE_TRACES", os.path.join("..", "traces"))
t = Trace.load(os.environ.get("KVMSCOPE_TRACE", os.path.join(TRACES, "mixed-2vcpu")))
pd.set_option("display.width", 200)
t
""",
    """md:## Who holds it, who waits

Per call site, in `lock_stat` terms. `main:dispatch` is the main loop running its
fd handlers, timers and bottom halves; `pio:*` are vCPUs dispatching exits to a
device.""",
    """
stats = t.lock_stats(["lock", "callsite"]).sort_values("wait_total_ns", ascending=False)
stats[["lock", "callsite", "acquisitions", "contentions", "contention_pct", "handoffs",
       "wait_total_ns", "wait_p99_ns", "hold_total_ns", "hold_p50_ns", "hold_p99_ns"]]
""",
    """
top = stats.iloc[0]
assert top.wait_total_ns > 0, "this trace should show contention"
print(f"Most waited-for call site: {top.callsite} "
      f"({top.contentions} contended acquisitions, {top.wait_total_ns / 1e6:.2f} ms waiting in total)")
""",
    """md:Who blocks whom: for every contended acquisition, its wait is charged to the
threads that held the lock during it. `(none)` is waiting while nobody held the
lock: the wake-up latency of the waiter after the release.""",
    """
blockers = t.blockers_matrix("bql")
(blockers / 1e6).round(3)   # ms
""",
    """md:## One contention burst

The busiest millisecond of lock waiting, on a per-thread timeline: state
intervals, who owns the lock, and hand-off arrows from each releasing thread to
the next owner.""",
    """
window = plot.busiest_window(t, width_ns=1_000_000)
show(t.plot_timeline(window=window))
""",
    """md:## Hand-off chains

A hand-off is an acquisition whose previous owner is another thread. Runs of
consecutive hand-offs are the lock ping-ponging between threads; the hand-off
latency is how long the lock stood free between the release and the next
acquisition.""",
    """
h = t.handoffs("bql").sort_values("acquired_ns").reset_index(drop=True)
print(f"{len(h)} hand-offs; next owner already waiting at the release in {h.waiting.mean():.0%} of them")
h.groupby(["from_name", "to_name"], observed=True).latency_ns.describe(percentiles=[0.5, 0.99])
""",
    """
# chains: consecutive acquisitions (in time order) that each changed owner
locks = t.locks[t.locks.lock == "bql"].sort_values("acquired_ns").reset_index(drop=True)
changed = (locks.thread.to_numpy()[1:] != locks.thread.to_numpy()[:-1])
run_id = np.cumsum(np.r_[True, ~changed])          # a new run starts where the owner stayed
chains = pd.Series(run_id).value_counts()
print("longest ping-pong chains (acquisitions in a row, each by another thread):")
chains.head(5)
""",
    """md:## Distributions and contention over time""",
    """
show(t.plot_distributions(metric="wait", by="callsite"))
""",
    """
show(t.plot_contention(by="thread", value="wait"))
""",
]

REGRESS = [
    """md:# Did this change regress lock hold times?

Three runs before and three after a change, of the same workload
(`pio-storm` on 2 vCPUs, 10000 iterations). The "change" is a deliberately
lengthened critical section: `--inject-hold pio:debugport=2us` busy-holds the BQL
2 us longer at that call site. `kvmscope.analysis.diff` must find it, name the
call site, and must not flag two groups of the same configuration.""",
    """
import glob
import io
import os
from IPython.display import Image, Markdown, display
from kvmscope.analysis import Trace, diff


def show(fig):
    # kvmscope draws without pyplot: show its figures as PNG
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    display(Image(buf.getvalue()))

TRACES = os.environ.get("KVMSCOPE_TRACES", os.path.join("..", "traces"))
base = sorted(glob.glob(os.path.join(TRACES, "regress", "base-*")))
new = sorted(glob.glob(os.path.join(TRACES, "regress", "hold2us-*")))
base, new
""",
    """md:## The comparison

Hold times per lock and call site: the relative change of the median with its
bootstrap confidence interval, a Mann-Whitney test, an effect size, and the
variation between the runs of each group.""",
    """
result = diff(base, new, metric="hold", stat="p50", threshold="10%")
print(result.verdict())
result.table
""",
    """
regressed = result.regressions
assert "pio:debugport" in set(regressed.callsite.astype(str)), "the lengthened call site must be named"
assert "pio:exitdev" not in set(regressed.callsite.astype(str))
regressed
""",
    """md:What the pull-request comment would say (`kvmscope diff ... --format markdown`):""",
    """
Markdown(result.to_markdown())
""",
    """md:## The distributions

The hold-time distributions of the regressed call site, before and after.""",
    """
from kvmscope.analysis.regress_render import plot_row
show(plot_row(result, "bql", "pio:debugport"))
""",
    """md:## No cry wolf

Two groups of the same configuration: the baseline runs against each other.""",
    """
same = diff(base[:2], base[2:], metric="hold", stat="p50", threshold="10%")
print(same.verdict())
assert not same.regressed
same.table[["lock", "callsite", "status"]]
""",
]

if __name__ == "__main__":
    notebook(BQL, "where-does-the-bql-go.ipynb")
    notebook(REGRESS, "did-this-change-regress.ipynb")
