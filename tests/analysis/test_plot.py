"""Plots and ``kvmscope plot``: what a user sees in the figures (rows,
arrows, legends, units, "no data" messages) and the files written."""

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


def rects(ax, collection=0):
    """(row, x0, x1, RGBA) of each rectangle of a timeline collection
    (0: thread states, 1: lock owners)."""
    coll = ax.collections[collection]
    out = []
    for path, colour in zip(coll.get_paths(), coll.get_facecolors()):
        xs, ys = path.vertices[:4, 0], path.vertices[:4, 1]
        out.append((int(round(ys.mean())), xs.min(), xs.max(), tuple(colour)))
    return sorted(out)


def covered(spans):
    """Merged (x0, x1) of a row's rectangles."""
    merged = []
    for x0, x1 in sorted(spans):
        if merged and x0 <= merged[-1][1] + 1e-9:
            merged[-1][1] = max(merged[-1][1], x1)
        else:
            merged.append([x0, x1])
    return [tuple(m) for m in merged]


def test_timeline_rows_reach_both_edges_of_the_window(tiny):
    # vcpu0 is in the guest from 1400 to 2000 ns, between two exits that
    # both lie outside the window: one interval over the whole width.
    # vcpu1 handles an exit until 1600, then is in the guest until 2050.
    from matplotlib.colors import to_rgba
    ax = plot.plot_timeline(tiny, window=(1500, 1900)).axes[0]
    x0, x1 = ax.get_xlim()
    drawn = rects(ax)
    vcpu0 = [r for r in drawn if r[0] == 1]
    assert len(vcpu0) == 1
    assert vcpu0[0][1:3] == pytest.approx((x0, x1))
    assert vcpu0[0][3] == pytest.approx(to_rgba(plot.STATE_COLORS["in_guest"]))
    vcpu1 = [r for r in drawn if r[0] == 2]
    assert covered([r[1:3] for r in vcpu1]) == [pytest.approx((x0, x1))]
    assert [r[3] for r in vcpu1] == [pytest.approx(to_rgba(plot.STATE_COLORS[s]))
                                     for s in ("exit", "in_guest")]
    # The same at the other edge: vcpu1 holds the BQL 1210 .. 1500.
    ax = plot.plot_timeline(tiny, window=(1300, 1450)).axes[0]
    x0, x1 = ax.get_xlim()
    for row in (1, 2):
        spans = [r[1:3] for r in rects(ax) if r[0] == row]
        assert covered(spans) == [pytest.approx((x0, x1))], row
    assert [r[1:3] for r in rects(ax, 1)] == [pytest.approx((x0, x1))]


def legend_colours(ax):
    out = []
    for h in ax.get_legend().legend_handles:
        colour = h.get_color() if hasattr(h, "get_xdata") else h.get_facecolor()
        from matplotlib.colors import to_rgba
        out.append(tuple(np.round(to_rgba(colour), 3)))
    return out


def _lab(colour):
    """CIE L*a*b* (D65) of a matplotlib colour."""
    from matplotlib.colors import to_rgb
    rgb = np.array(to_rgb(colour))
    rgb = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722],
                    [0.0193, 0.1192, 0.9505]]) @ rgb / [0.95047, 1.0, 1.08883]
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return 116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])


def colour_difference(c1, c2):
    """CIEDE2000 difference of two colours: how different they look."""
    (L1, a1, b1), (L2, a2, b2) = _lab(c1), _lab(c2)
    cm = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2
    g = 0.5 * (1 - np.sqrt(cm ** 7 / (cm ** 7 + 25 ** 7)))
    a1, a2 = (1 + g) * a1, (1 + g) * a2
    c1, c2 = np.hypot(a1, b1), np.hypot(a2, b2)
    h1, h2 = np.degrees(np.arctan2(b1, a1)) % 360, np.degrees(np.arctan2(b2, a2)) % 360
    dh = 0.0 if c1 * c2 == 0 else (h2 - h1 + 180) % 360 - 180
    dH = 2 * np.sqrt(c1 * c2) * np.sin(np.radians(dh / 2))
    lm, cmp_ = (L1 + L2) / 2, (c1 + c2) / 2
    hm = h1 + h2 if c1 * c2 == 0 else \
        ((h1 + h2) / 2 if abs(h1 - h2) <= 180 else (h1 + h2 + 360) / 2 % 360)
    t = (1 - 0.17 * np.cos(np.radians(hm - 30)) + 0.24 * np.cos(np.radians(2 * hm))
         + 0.32 * np.cos(np.radians(3 * hm + 6)) - 0.20 * np.cos(np.radians(4 * hm - 63)))
    sl = 1 + 0.015 * (lm - 50) ** 2 / np.sqrt(20 + (lm - 50) ** 2)
    sc, sh = 1 + 0.045 * cmp_, 1 + 0.015 * cmp_ * t
    rt = -np.sin(np.radians(60 * np.exp(-((hm - 275) / 25) ** 2))) * \
        2 * np.sqrt(cmp_ ** 7 / (cmp_ ** 7 + 25 ** 7))
    dc = c2 - c1
    return float(np.sqrt(((L2 - L1) / sl) ** 2 + (dc / sc) ** 2 + (dH / sh) ** 2
                         + rt * (dc / sc) * (dH / sh)))


def test_owner_colours_do_not_look_like_state_colours():
    # Light green (in guest) and the green that once meant "bql held by
    # vcpu1" differ by 19.5 and read as one colour; every owner colour is
    # further than that from every state colour, from black (hand-off
    # arrows) and from the other owner colours.
    assert colour_difference("#a6d96a", "#2ca02c") == pytest.approx(19.47, abs=0.01)
    others = list(plot.STATE_COLORS.values()) + ["black"]
    for i, c in enumerate(plot.THREAD_PALETTE):
        near = min(others + list(plot.THREAD_PALETTE[:i]),
                   key=lambda o: colour_difference(c, o))
        assert colour_difference(c, near) > 20, (c, near)


@pytest.mark.parametrize("where", ["tiny", "synth"])
def test_no_two_meanings_share_a_colour(where, tiny, synth):
    t = {"tiny": tiny, "synth": synth}[where]
    window = (1000, 2600) if where == "tiny" else (t.start_ns, t.end_ns)
    ax = plot.plot_timeline(t, window=window, max_intervals=10 ** 6).axes[0]
    legend = legend_texts(ax)
    colours = legend_colours(ax)
    assert len(set(colours)) == len(colours), list(zip(legend, colours))
    # Thread states and lock owners are both in it.
    assert any(x.startswith("bql held by") for x in legend)
    assert "in guest (KVM_RUN)" in legend
    # Owner colours and state colours are separate palettes, and no owner
    # is drawn black like the hand-off arrows.
    assert not set(plot.THREAD_PALETTE) & set(plot.STATE_COLORS.values())
    assert len(set(plot.THREAD_PALETTE)) == len(plot.THREAD_PALETTE)
    from matplotlib.colors import to_rgba
    assert to_rgba("black") not in {to_rgba(c) for c in plot.THREAD_PALETTE}


def test_busiest_window_weighs_waits_by_time_not_count(tmp_path):
    # At 5 ms, 200 contended acquisitions that wait 100 ns each; at 15 ms
    # one that waits 300 us.  Counting acquisitions would pick 5 ms.
    acq = np.r_[5_000_000 + np.arange(200) * 5_000, 15_300_000,
                25_000_000].astype(np.int64)
    req = acq - 100
    req[200] = 15_000_000
    locks = pd.DataFrame({"thread": np.arange(len(acq)) % 2 + 1, "request_ns": req,
                          "acquired_ns": acq, "released_ns": acq + 50})
    t = Trace.load(write_trace(tmp_path / "w", threads=THREADS, locks=locks))
    lo, hi = plot.busiest_window(t)
    assert lo <= 15_000_000 and 15_300_000 < hi
    # ... centred on it, within the resolution of a twentieth of a window.
    assert (lo + hi) / 2 == pytest.approx(15_150_000, abs=50_000)


def test_a_stall_longer_than_the_window_is_shown_where_it_ends(tmp_path):
    # One waiter stuck for 5 ms; the hand-offs that end it at 13 ms.
    acq = np.array([1_000_000, 13_000_000, 13_000_300, 20_000_000], np.int64)
    req = np.array([1_000_000, 8_000_000, 12_999_000, 20_000_000], np.int64)
    locks = pd.DataFrame({"thread": [1, 2, 1, 2], "request_ns": req,
                          "acquired_ns": acq, "released_ns": acq + 200})
    t = Trace.load(write_trace(tmp_path / "s", threads=THREADS, locks=locks))
    lo, hi = plot.busiest_window(t)
    assert lo < 13_000_000 < 13_000_500 < hi


def test_default_pio_storm_timeline_shows_contention():
    # The shipped pio-storm trace: thousands of waits of a few hundred ns
    # and a few of 30 - 48 us.  The default window shows waits that are
    # visible at 1 ms, at least a 25th of it in red.
    from matplotlib.colors import to_rgba
    t = Trace.load(os.path.join(os.path.dirname(__file__), "..", "..",
                                "traces", "pio-storm-2vcpu"))
    ax = plot.plot_timeline(t).axes[0]
    assert "busiest 1 ms of contention" in ax.get_title()
    red = pytest.approx(to_rgba(plot.STATE_COLORS["wait_lock"]))
    waiting = sum(x1 - x0 for _, x0, x1, c in rects(ax) if c == red)
    x0, x1 = ax.get_xlim()
    assert waiting >= (x1 - x0) / 25


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


def test_window_text_resolves_against_the_trace(tiny):
    # --window as the plot command reads it (kvmscope.units): absolute ns,
    # or offsets from the trace start (1000 ns here) with a unit.
    from kvmscope import units

    def window(text):
        return units.parse_window(text).resolve(tiny.start_ns, tiny.end_ns)
    assert window("1100:1300") == (1100, 1300)
    assert window("100ns:0.3us") == (1100, 1300)
    assert window(":1us") == (1000, 2000)
    assert window("1us:") == (2000, tiny.end_ns)
    for bad in ("1ms", "a:b", "5:3", "1.5:2", "2us:1200"):
        with pytest.raises(ValueError):
            window(bad)


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
