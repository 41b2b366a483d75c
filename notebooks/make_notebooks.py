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
    """md:## Whose critical sections made the others wait

The wait anatomy turned around: for each call site that held the BQL, how long
other threads waited while it did (`caused_ns`), as a share of all the
contended wait; then the hand-off latency, when the lock was free but the
next owner not yet running.""",
    """
caused = t.caused()
assert caused.iloc[0].holder_callsite != "(hand-off)" and caused.iloc[0].caused_ns > 0
caused[["holder_callsite", "caused_ns", "caused_pct", "waits", "acquisitions", "hold_mean_ns",
        "hold_p99_ns"]]
""",
    """md:## One request's path

What a wait for the BQL means for a guest: the block request whose completion
waited longest for the BQL in the main loop, followed stage by stage from the
guest's OUT exit to the vCPU taking its interrupt (`Trace.request_paths`,
docs/paths.md), with whom each wait was behind.""",
    """
p = t.request_paths("block")
r = p.loc[p["loop_bql_wait_ns"].idxmax()]
stages = ["decode", "vcpu_bql_wait", "dispatch", "queue", "io", "wakeup", "loop_bql_wait",
          "pending", "callback", "delivery"]
assert sum(r[f"{s}_ns"] for s in stages) == r["total_ns"]
print(f"req {r.req} ({r.thread_name} {r.op}): {r.total_ns / 1e3:.1f} us end to end; the main loop "
      f"waited {r.loop_bql_wait_ns / 1e3:.1f} us for the BQL behind "
      f"{r.loop_bql_wait_holder} at {r.loop_bql_wait_holder_site}")
pd.DataFrame({"ns": [r[f"{s}_ns"] for s in stages]}, index=stages).T
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

SLOW = [
    """md:# Why was this request slow?

A block request of the `mixed` guest goes from the vCPU that writes the
command register, through an AIO worker, to the main loop that completes it,
and back to the vCPU with an interrupt. This notebook follows every request
across those threads (`Trace.request_paths`, docs/paths.md), picks the
slowest, finds the stage that made it slow, and asks what that stage was
waiting for; then does the same for the latest timer tick.

The trace ships in `traces/mixed-2vcpu` (recorded with
`kvmscope run mixed --vcpus 2 -n 400`); set `KVMSCOPE_TRACE` to look at another.""",
    """
import io
import os
import numpy as np
import pandas as pd
from IPython.display import Image, display
from kvmscope.analysis import Trace, paths


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
    """md:## Every request, stage by stage

One row per block request, a column per stage. The stages run from one
recorded timestamp to the next, so they add up to the request's end-to-end
time; the waiting stages also name whom the request waited behind.""",
    """
p = t.request_paths("block")
STAGES = list(paths.STAGES["block"])
assert p["matched"].all(), "every stage of every request is in this trace"
assert (sum(p[f"{s}_ns"] for s in STAGES) == p["total_ns"]).all()
summary = paths.summary(p)
summary[["stage", "what", "mean_ns", "p50_ns", "p99_ns", "max_ns", "share_pct", "behind"]]
""",
    """md:## The slowest request

An fsync's time is the disk's; among reads and writes, the slowest. Each of its
stages against the same stage's median over all requests: the stage far above
its median is what made this request slow.""",
    """
rw = p[p["op"].astype(str) != "fsync"]
r = rw.loc[rw["total_ns"].idxmax()]
typical = {s: max(float(p[f"{s}_ns"].median()), 1.0) for s in STAGES}
stage_table = pd.DataFrame({
    "ns": [int(r[f"{s}_ns"]) for s in STAGES],
    "median_ns": [typical[s] for s in STAGES],
    "x_median": [r[f"{s}_ns"] / typical[s] for s in STAGES]}, index=STAGES)
culprit = (stage_table["ns"] - stage_table["median_ns"]).idxmax()
print(f"req {r.req} ({r.thread_name} {r.op} {r.length} B): {r.total_ns / 1e3:.1f} us end to end, "
      f"{r.total_ns / p['total_ns'].median():.0f} x the median request; "
      f"{culprit}: {r[culprit + '_ns'] / 1e3:.1f} us ({paths.stage_text('block', culprit)})")
stage_table
""",
    """md:## What that stage was waiting for

Who held things up: a waiting stage names its holder (the BQL owner, or the
AIO request that kept a worker busy). And what the thread the request was
waiting on did meanwhile: its states (`Trace.thread_states`) over the stage's
interval. A main loop asleep in `poll` after the I/O was done was not running
although its eventfd had been written: the host did not schedule it.""",
    """
starts = r["start_ns"] + np.cumsum([0] + [int(r[f"{s}_ns"]) for s in STAGES[:-1]])
lo = int(starts[STAGES.index(culprit)])
hi = lo + int(r[f"{culprit}_ns"])
if culprit in paths.WAITS["block"]:
    print(f"{culprit} waited behind {r[culprit + '_holder']} {r[culprit + '_holder_site']}")
thread = {"queue": r.worker_name, "io": r.worker_name}.get(
    culprit, r.thread_name if culprit in ("decode", "vcpu_bql_wait", "dispatch", "delivery")
    else r.loop_thread_name)
st = t.window(lo, hi, neighbours=True).thread_states([thread])
st = st.assign(start_ns=st["start_ns"].clip(lower=lo), end_ns=st["end_ns"].clip(upper=hi))
st = st[st["end_ns"] > st["start_ns"]]
spent = (st["end_ns"] - st["start_ns"]).groupby(st["state"], observed=True).sum()
assert spent.sum() <= hi - lo
print(f"{thread} during {culprit} ({(hi - lo) / 1e3:.1f} us):")
(spent / 1e3).round(1).rename("us").sort_values(ascending=False)
""",
    """
# The request's span on the timeline of the threads it crossed
span = (int(r["start_ns"]) - 20_000, int(r["end_ns"]) + 20_000)
show(t.plot_timeline(window=span, threads=[r.thread_name, r.worker_name, r.loop_thread_name]))
""",
    """md:## All requests

The slowest twenty as stacked bars (the waiting stages in reds), and each
stage's distribution over every request.""",
    """
show(t.plot_request_paths("block"))
""",
    """md:## Timer ticks: why late?

A tick is late (`late_ns = fire - deadline`) by the main loop's wake-up, its
wait for the BQL and the callbacks that ran first; then its interrupt must
reach the guest.""",
    """
ticks = t.request_paths("timer")
LATE = ["wakeup", "loop_bql_wait", "pending"]
assert (sum(ticks[f"{s}_ns"] for s in LATE) == ticks["late_ns"]).all()
worst = ticks.loc[ticks["late_ns"].idxmax()]
parts = {s: int(worst[f"{s}_ns"]) for s in LATE}
print(f"the latest tick ({worst['name']}) was {worst.late_ns / 1e3:.1f} us late: "
      + ", ".join(f"{s} {v / 1e3:.1f} us" for s, v in parts.items())
      + ("" if worst.loop_bql_wait_holder == paths.NONE else
         f"; its BQL wait was behind {worst.loop_bql_wait_holder} {worst.loop_bql_wait_holder_site}"))
paths.summary(ticks)[["stage", "mean_ns", "p50_ns", "p99_ns", "max_ns", "share_pct", "behind"]]
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

def what_would_a_fix_buy(path="what-would-a-fix-buy.ipynb"):
    """Writes the notebook "What would a fix buy?" (re-execution, docs/whatif.md)."""
    notebook([
        """md:# What would a fix buy?

A recording says what happened; re-executing it in a model of its threads
(`kvmscope replay`, `kvmscope whatif`, docs/whatif.md) says what would have
happened under other conditions. Here: check that the model gives the
recording back, rank the fixes worth making, then predict one change and put
the prediction beside a real run of it.

The traces ship in `traces/`: `mixed-2vcpu` (vCPUs, timers, AIO completions
and port writes competing for the BQL), and `regress/base-1` with
`regress/hold2us-1`, the same `pio-storm` run recorded without and with
`--inject-hold pio:debugport=2us`.""",
        """
import io
import os
import pandas as pd
from IPython.display import Image, display
from matplotlib.figure import Figure
from kvmscope.analysis import Trace, plot, whatif


def show(fig):
    # kvmscope draws without pyplot: show its figures as PNG
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    display(Image(buf.getvalue()))

TRACES = os.environ.get("KVMSCOPE_TRACES", os.path.join("..", "traces"))
mixed = Trace.load(os.path.join(TRACES, "mixed-2vcpu"))
base = Trace.load(os.path.join(TRACES, "regress", "base-1"))
real = Trace.load(os.path.join(TRACES, "regress", "hold2us-1"))
pd.set_option("display.width", 200)
""",
        """md:## The model gives the recording back

Re-executed without a change, the recording comes back: every exit,
acquisition, main-loop iteration and AIO request at its recorded time.""",
        """
again = mixed.reexecute()
runs, sites = whatif.compare(mixed, again)
assert (sites["acquisitions_recorded"] == sites["acquisitions_predicted"]).all()
assert (runs.set_index("metric").loc[["bql_wait_ns", "exits_per_s"], "change"] == 0).all()
runs
""",
        """md:## What to fix first

Each call site's critical section halved, and each device taken off the BQL,
re-executed one at a time: ranked by the guest progress (exits/s) they buy,
then by the BQL wait they remove.""",
        """
ranking = whatif.rank(mixed)
assert (ranking.iloc[0]["callsite"], ranking.iloc[0]["fix"]) == ("pio:blk", "lockless")
ranking
""",
        """md:The block device's dispatch holds the BQL for most of its time (submitting
the AIO request); taking it off the BQL removes most of the waiting. Here is
that prediction against the recording, figure by figure and per call site:""",
        """
runs, sites = whatif.compare(mixed, mixed.reexecute(lockless=["blk"]))
display(runs)
sites
""",
        """md:## A prediction beside a real run

The other way round: what does a 2 us longer critical section at
`pio:debugport` cost? Predicted from the baseline run, and measured: the
same workload was recorded with `--inject-hold pio:debugport=2us`.""",
        """
predicted = base.reexecute(add_hold={"pio:debugport": 2000})
rec, pred, meas = whatif.metrics(base), whatif.metrics(predicted), whatif.metrics(real)
table = pd.DataFrame({
    "baseline": rec, "predicted": pred, "measured": meas,
}).loc[["exits_per_s", "bql_wait_ns", "contended_pct", "hold_ns"]]
table["error"] = (table["predicted"] - table["measured"]) / table["measured"]
assert abs(table.loc["exits_per_s", "error"]) < 0.15
assert table.loc["bql_wait_ns", "predicted"] > 10 * table.loc["bql_wait_ns", "baseline"]
table
""",
        """
fig = Figure(figsize=(12, 4))
left, right = fig.subplots(1, 2, sharex=True)
plot.plot_distributions(predicted, metric="wait", ax=left)
left.set_title("predicted from the baseline")
plot.plot_distributions(real, metric="wait", ax=right)
right.set_title("measured")
show(fig)
""",
        """md:The prediction gets the lost guest progress (exits/s) right and the wait
order of magnitude (a hundred times the baseline's), but puts twice as much
wait and contention as measured. The reason is in docs/whatif.md, *What it
cannot represent*: on this host the two vCPUs' exits are coupled (their lock
requests come within 50 ns of each other far more often than chance), and the
model, which runs each vCPU's guest time independently, does not keep that
coupling once a change moves them out of their recorded phase.""",
    ], path)


if __name__ == "__main__":
    notebook(BQL, "where-does-the-bql-go.ipynb")
    notebook(REGRESS, "did-this-change-regress.ipynb")
    notebook(SLOW, "why-was-this-request-slow.ipynb")
    what_would_a_fix_buy()
