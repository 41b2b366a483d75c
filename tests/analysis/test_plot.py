"""Plots and ``kvmscope plot``: what a user sees in the figures (rows,
arrows, legends, units, "no data" messages) and the files written; plus the
progress line."""

import io
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from matplotlib.text import Annotation

from kvmscope.analysis import Trace, cli, plot
from kvmscope.analysis.progress import Progress
from kvmscope.analysis.synth import make_trace, write_trace

from timelines import TWO_VCPUS_EXITS as EXITS
from timelines import TWO_VCPUS_LOCKS as LOCKS
from timelines import TWO_VCPUS_THREADS as THREADS


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """Every table filled: main loop, bottom halves, timers, AIO."""
    return Trace.load(make_trace(tmp_path_factory.mktemp("plot") / "synth",
                                 3000, threads=3, aio_workers=1, seed=4))


@pytest.fixture(scope="module")
def empty(tmp_path_factory):
    """Exits and locks only, as the runner records today."""
    return Trace.load(write_trace(tmp_path_factory.mktemp("plot") / "empty",
                                  threads=THREADS, exits=EXITS, locks=LOCKS,
                                  aio=None))


def arrows(ax):
    return [a for a in ax.texts if isinstance(a, Annotation)]


def legend_texts(ax):
    leg = ax.get_legend()
    return [t.get_text() for t in leg.get_texts()] if leg else []


def all_text(fig):
    return " ".join(t.get_text() for ax in fig.axes
                    for t in [ax.title, *ax.texts])


# --------------------------------------------------------------------------
# timeline

def test_timeline_rows_states_and_handoff_arrows(tiny):
    fig = plot.plot_timeline(tiny, window=(1000, 2600))
    ax = fig.axes[0]
    # One row per thread that recorded anything (not the drain), under the
    # lock's ownership row.
    assert [t.get_text() for t in ax.get_yticklabels()] == \
        ["bql owner", "vcpu0", "vcpu1"]
    assert len(arrows(ax)) == 3                     # three hand-offs
    legend = legend_texts(ax)
    for label in ("waiting for lock", "holding lock", "handling exit",
                  "in guest (KVM_RUN)", "bql held by vcpu0",
                  "bql held by vcpu1"):
        assert label in legend
    assert any(t.startswith("hand-off") for t in legend)
    assert "µs" in ax.get_xlabel() or "ns" in ax.get_xlabel()
    # The first arrow leaves vcpu0 at its release (1200 ns) for vcpu1's
    # acquisition (1210 ns); x is time since the trace start (1000 ns).
    first = arrows(ax)[0]
    (x0, y0), (x1, y1) = first.xyann, first.xy
    unit_ns = {"ns": 1, "µs": 1e3}[ax.get_xlabel().split("(")[1][:-1]]
    assert (x0 * unit_ns, y0, x1 * unit_ns, y1) == \
        pytest.approx((200, 1, 210, 2))


def test_timeline_state_colours_are_the_documented_ones(tiny):
    ax = plot.plot_timeline(tiny, window=(1000, 2600)).axes[0]
    colours = {tuple(np.round(c, 3)) for coll in ax.collections
               for c in coll.get_facecolors()}
    from matplotlib.colors import to_rgba
    for state in ("wait_lock", "hold_lock", "exit", "in_guest"):
        assert tuple(np.round(to_rgba(plot.STATE_COLORS[state]), 3)) in colours


def test_timeline_caps_arrows_and_says_so(synth):
    lo = synth.start_ns
    fig = plot.plot_timeline(synth, window=(lo, lo + 2_000_000), max_arrows=5)
    ax = fig.axes[0]
    assert len(arrows(ax)) == 5
    assert "5 of" in ax.get_title() and "hand-offs drawn" in ax.get_title()


def test_timeline_default_window_is_the_busiest_contention(tmp_path):
    # Light traffic for 20 ms, one burst of long waits at 12 ms.
    n = 2000
    acq = 1_000_000 + np.arange(n) * 10_000
    locks = pd.DataFrame({"thread": np.arange(n) % 2 + 1,
                          "request_ns": acq, "acquired_ns": acq,
                          "released_ns": acq + 100})
    burst = (acq >= 13_000_000) & (acq < 13_400_000)
    locks.loc[burst, "request_ns"] -= 5000
    t = Trace.load(write_trace(tmp_path / "b", threads=THREADS, locks=locks))
    lo, hi = plot.busiest_window(t)
    assert hi - lo == 1_000_000 and lo <= 13_000_000 and hi >= 13_400_000
    ax = plot.plot_timeline(t).axes[0]
    assert "busiest 1 ms of contention" in ax.get_title()
    unit_ns = {"ns": 1, "µs": 1e3, "ms": 1e6}[
        ax.get_xlabel().split("(")[1][:-1]]
    x0, x1 = (v * unit_ns + t.start_ns for v in ax.get_xlim())
    assert (x0, x1) == pytest.approx((lo, hi), abs=1)


def test_timeline_aggregates_a_crowded_window(synth):
    fig = plot.plot_timeline(synth, window=(synth.start_ns, synth.end_ns),
                             max_intervals=500, max_arrows=10)
    ax = fig.axes[0]
    assert "aggregated: state covering most of each" in ax.get_title()
    # Still one polygon collection for the states and one for the owners.
    assert len(ax.collections) == 2
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["bql owner", "main", "vcpu0", "vcpu1", "aio0"]


def test_timeline_selected_threads_and_locks(synth):
    lo = int(synth.locks["acquired_ns"].min())      # synth starts 0.9 ms earlier
    fig = plot.plot_timeline(synth, window=(lo, lo + 500_000),
                             threads=["vcpu1", "main"], lock=None)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["blk:queue owner", "bql owner", "vcpu1", "main"]
    with pytest.raises(ValueError, match="no lock 'nope'"):
        plot.plot_timeline(synth, lock="nope")


def test_timeline_draws_into_a_given_axes(tiny):
    fig = Figure()
    ax = fig.add_subplot()
    assert plot.plot_timeline(tiny, window=(1000, 2600), ax=ax) is fig
    assert len(arrows(ax)) == 3


# --------------------------------------------------------------------------
# distributions

def test_wait_and_hold_distributions_per_call_site(synth):
    fig = plot.plot_distributions(synth, "hold")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert "hold (acquired → released)" in ax.get_xlabel()
    legend = legend_texts(ax)
    assert len(legend) == 4            # bql x 3 call sites, blk:queue x 1
    assert any(t.startswith("bql vcpu:io (n=") for t in legend)
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert any(t.endswith(("ns", "µs", "ms")) for t in ticks if t)

    wait = plot.plot_distributions(synth, "wait", by="thread").axes[0]
    assert "contended acquisitions" in wait.get_xlabel()
    n = int(synth.locks["contended"].sum())
    counts = [int(t.split("n=")[1].split(",")[0].replace(",", ""))
              for t in legend_texts(wait)]
    assert sum(counts) == n


def test_distribution_as_histogram_and_other_group(synth):
    ax = plot.plot_distributions(synth, "hold", kind="hist",
                                 max_groups=2).axes[0]
    assert ax.get_ylabel() == "count"
    assert any(t.startswith("other (2 groups)") for t in legend_texts(ax))


def test_wait_distribution_without_contention_says_no_data(tmp_path):
    t = Trace.load(write_trace(tmp_path / "u", locks=pd.DataFrame({
        "thread": [1, 2], "request_ns": [0, 200], "acquired_ns": [0, 200],
        "released_ns": [100, 300]})))
    fig = plot.plot_distributions(t, "wait")
    assert "no data: no contended acquisitions" in all_text(fig)


# --------------------------------------------------------------------------
# over time

def test_contention_heatmap_adds_up_to_the_wait_time(tiny, synth):
    ax = plot.plot_contention(tiny, by="thread", bins=10).axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["vcpu1"]
    assert np.nansum(ax.images[0].get_array()) == pytest.approx(130)
    assert "wait time per bin (ns)" in fig_colorbar_label(ax)

    fig = plot.plot_contention(synth, by="callsite", bins=50)
    ax = fig.axes[0]
    waits = synth.lock_waits()
    assert len(ax.get_yticklabels()) == \
        waits.groupby(["lock", "callsite"], observed=True).ngroups
    unit = fig_colorbar_label(ax).split("(")[1][:-1]
    scale = {"ns": 1, "µs": 1e3, "ms": 1e6}[unit]
    assert np.nansum(ax.images[0].get_array()) * scale == \
        pytest.approx(waits["wait_ns"].sum(), rel=1e-6)

    counts = plot.plot_contention(synth, value="contended").axes[0]
    assert np.nansum(counts.images[0].get_array()) == len(waits)


def fig_colorbar_label(ax):
    cbar_ax = [a for a in ax.figure.axes if a is not ax][0]
    return cbar_ax.get_ylabel()


def test_exit_rate_integrates_to_the_exit_count(synth):
    ax = plot.plot_exit_rate(synth, bins=40).axes[0]
    assert ax.get_ylabel() == "exits/s"
    counts = synth.exits["reason"].value_counts()
    width_s = (synth.end_ns - synth.start_ns) / 40 / 1e9
    for line in ax.get_lines():
        reason = line.get_label().split(" (")[0]
        assert line.get_ydata().sum() * width_s == \
            pytest.approx(counts[reason])
    assert {l.get_label().split(" (")[0] for l in ax.get_lines()} == \
        {"io", "mmio"}


# --------------------------------------------------------------------------
# AIO, bottom halves, timers

def test_aio_bh_timer_latency_on_a_trace_that_has_them(synth):
    ax = plot.plot_aio_latency(synth).axes[0]
    legend = legend_texts(ax)
    assert [t.split(" (")[0] for t in legend] == \
        ["queue", "io", "completion", "total"]
    assert f"{len(synth.aio):,} requests" in ax.get_title()
    bh = plot.plot_bh_latency(synth).axes[0]
    assert {t.split(" (")[0] for t in legend_texts(bh)} == \
        {"blk:complete", "serial:flush"}
    tm = plot.plot_timer_lateness(synth).axes[0]
    assert legend_texts(tm)[0].startswith("timerdev:tick (n=")
    assert tm.get_xscale() == "log"


@pytest.mark.parametrize("func, what", [
    (plot.plot_aio_latency, "no AIO requests"),
    (plot.plot_bh_latency, "no bottom halves"),
    (plot.plot_timer_lateness, "no timer firings")])
def test_empty_tables_say_so_in_the_figure(empty, synth, tmp_path, func, what):
    fig = func(empty)
    assert f"no data: {what}" in all_text(fig)
    # ... and to a program, which a figure with data does not.
    assert plot.no_data(fig).startswith(what)
    assert plot.no_data(func(synth)) is None
    out = plot.save(fig, tmp_path / "e.png")          # renders, no crash
    assert os.path.getsize(out) > 1000


def test_a_window_without_events_says_so(tiny, synth):
    # tiny's events are at 1000 .. 2500 ns.
    for fig in (plot.plot_timeline(tiny, window=(10_000, 20_000)),
                plot.plot_exit_rate(tiny, window=(10_000, 20_000)),
                plot.plot_distributions(tiny, "hold", window=(10_000, 20_000))):
        assert plot.no_data(fig).endswith("in this window"), all_text(fig)
        assert "no data: " in all_text(fig)
    # synth's first event is 0.9 ms after its start.
    lo = synth.start_ns
    assert plot.no_data(plot.plot_timeline(synth, window=(lo, lo + 100_000))) == \
        "no thread events in this window"
    assert plot.no_data(plot.plot_timeline(synth, window=(lo, lo + 1_000_000))) is None


# --------------------------------------------------------------------------
# files and the command

MAGIC = {".png": b"\x89PNG\r\n\x1a\n", ".svg": b"<?xml", ".pdf": b"%PDF-"}


@pytest.mark.parametrize("ext", [".png", ".svg", ".pdf"])
def test_save_writes_the_format_of_the_extension(tiny, tmp_path, ext):
    out = plot.save(plot.plot_timeline(tiny, window=(1000, 2600)),
                    tmp_path / f"t{ext}")
    with open(out, "rb") as f:
        assert f.read(8).startswith(MAGIC[ext])
    assert os.path.getsize(out) > 1000
    with pytest.raises(ValueError, match="use .png, .svg or .pdf"):
        plot.save(Figure(), tmp_path / "t.gif")


def test_parse_window(tiny):
    assert plot.parse_window("1100:1300", tiny) == (1100, 1300)
    assert plot.parse_window("100ns:0.3us", tiny) == (1100, 1300)
    assert plot.parse_window(":1us", tiny) == (1000, 2000)
    assert plot.parse_window("1us:", tiny) == (2000, tiny.end_ns)
    for bad in ("1ms", "a:b", "5:3", "1.5:2"):
        with pytest.raises(ValueError):
            plot.parse_window(bad, tiny)


def run(capsys, *argv):
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("kind", plot.KINDS)
def test_cli_plot_every_kind(capsys, synth, tmp_path, kind):
    out = tmp_path / f"{kind}.png"
    status, _, err = run(capsys, "plot", synth.path, "--kind", kind,
                         "--window", "1ms:5ms", "-o", out)
    assert (status, err) == (0, "")
    assert out.read_bytes().startswith(MAGIC[".png"])


@pytest.mark.parametrize("argv, why", [
    (["--kind", "aio"], "no AIO requests in this trace (the aio table is empty)"),
    (["--kind", "timers"], "no timer firings in this trace (the timers table is empty)"),
    (["--kind", "timeline", "--window", "5us:6us"], "no thread events in this window"),
    (["--kind", "exits", "--window", "5us:6us"], "no vCPU exits in this window"),
    (["--kind", "contention", "--window", "5us:6us"],
     "no contended lock acquisitions in this window")])
def test_cli_plot_with_nothing_to_draw_says_so_and_exits_1(capsys, empty, tmp_path,
                                                           argv, why):
    out = tmp_path / "a.png"
    status, stdout, err = run(capsys, "plot", empty.path, *argv, "-o", out)
    assert status == 1 and stdout == ""
    assert err == f"kvmscope plot: no data: {why}; {out} says so\n"
    # The file is written all the same: the picture says the same.
    assert out.read_bytes().startswith(MAGIC[".png"])


def test_cli_plot_errors_are_one_line_and_status_2(capsys, tiny, tmp_path):
    cases = [(["plot", tmp_path / "missing", "-o", tmp_path / "x.png"],
              "trace directory not found"),
             (["plot", tiny.path, "-o", tmp_path / "x.gif"],
              "unsupported output format '.gif'"),
             (["plot", tiny.path, "--window", "9:3", "-o", tmp_path / "x.png"],
              "empty window"),
             (["plot", tiny.path, "--lock", "nope", "-o", tmp_path / "x.png"],
              "no lock 'nope'"),
             (["plot", tiny.path, "-o", tmp_path / "no" / "x.png"],
              "No such file or directory")]
    for argv, message in cases:
        status, _, err = run(capsys, *argv)
        assert status == 2
        assert err.startswith("kvmscope plot: error: ") and message in err
        assert err.count("\n") == 1


def test_trace_wrappers_return_figures(tiny, synth):
    assert isinstance(tiny.plot_timeline(window=(1000, 2600)), Figure)
    assert isinstance(tiny.plot_distributions("hold"), Figure)
    assert isinstance(tiny.plot_contention(), Figure)
    assert isinstance(tiny.plot_exit_rate(), Figure)
    assert isinstance(synth.plot_aio_latency(), Figure)
    assert isinstance(synth.plot_bh_latency(), Figure)
    assert isinstance(synth.plot_timer_lateness(), Figure)


def test_library_never_uses_pyplot(tiny):
    # Figures are pyplot-free: nothing accumulates in pyplot's registry.
    plot.plot_timeline(tiny, window=(1000, 2600))
    assert "matplotlib.pyplot" not in sys.modules or \
        not sys.modules["matplotlib.pyplot"].get_fignums()


# --------------------------------------------------------------------------
# progress

class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_draws_only_on_a_terminal():
    quiet = io.StringIO()
    with Progress(2, "x", stream=quiet) as bar:
        bar.update(1, "a")
        bar.update(1, "b")
    assert quiet.getvalue() == ""

    tty = _Tty()
    with Progress(2, "export", stream=tty, min_interval=0) as bar:
        bar.update(1, "locks")
        bar.update(1, "write")
    text = tty.getvalue()
    assert "\rexport:  50% (1/2) locks" in text
    assert "\rexport: 100% (2/2) write" in text
    assert text.endswith("\r")                        # line wiped at the end


# --------------------------------------------------------------------------
# a real recording

@pytest.mark.kvm
def test_timeline_of_a_real_recording(tmp_path):
    exe = shutil.which("kvmscope", path=os.path.dirname(sys.executable))
    argv = ([exe] if exe else [sys.executable, "-m", "kvmscope.cli"]) + [
        "run", "pio-storm", "--vcpus", "2", "-n", "3000",
        "-o", str(tmp_path / "real"), "-q"]
    subprocess.run(argv, check=True, capture_output=True, timeout=120)
    t = Trace.load(tmp_path / "real")
    fig = t.plot_timeline()
    ax = fig.axes[0]
    rows = [x.get_text() for x in ax.get_yticklabels()]
    # The lock row, then every thread that recorded something (the drain
    # thread records nothing and gets no row).
    recorded = set()
    for table in (t.exits, t.locks, t.loop, t.bh, t.timers, t.aio, t.irqs):
        recorded |= set(table["thread_name"].astype(str))
    assert rows[0] == "bql owner" and set(rows[1:]) == recorded
    assert {"vcpu0", "vcpu1"} <= recorded and "drain" not in rows
    assert arrows(ax)                   # the vCPUs hand the BQL over
    out = plot.save(fig, tmp_path / "real.png")
    assert os.path.getsize(out) > 10_000
