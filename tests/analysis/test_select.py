"""Report filters as perf users expect them: --window, --threads, --callsite,
--sort, --limit/--top on `kvmscope report`, and Trace.window with the CLI's
units; bad names list the valid ones."""
import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from kvmscope import cli
from kvmscope.analysis import Trace, report, select
from kvmscope.analysis.synth import write_trace
from kvmscope.errors import ConfigError

from timelines import VCPU_MAIN_LOCKS, VCPU_MAIN_THREADS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MIXED = os.path.join(ROOT, "traces", "mixed-2vcpu")


@pytest.fixture(scope="module")
def vm(tmp_path_factory):
    # Times are shifted so that the trace starts at 1000 ns: relative and
    # absolute bounds then differ.
    locks = VCPU_MAIN_LOCKS.copy()
    for c in ("request_ns", "acquired_ns", "released_ns"):
        locks[c] += 1000
    return Trace.load(write_trace(tmp_path_factory.mktemp("vm") / "t", threads=VCPU_MAIN_THREADS,
                                  locks=locks))


def kvmscope(*args):
    return subprocess.run([sys.executable, "-m", "kvmscope.analysis", *args],
                          capture_output=True, text=True)


def test_window_takes_cli_units(vm):
    # "120ns" is 120 ns after the start (1000): rows overlapping [1120, 1160)
    # are main's [1050, 1150] and vcpu0's [1130, 1200].
    a = vm.window("120ns", "160ns")
    b = vm.window(1120, 1160)
    c = vm.window("120ns:160ns")
    assert len(a.locks) == len(b.locks) == len(c.locks) == 2
    assert a.locks["acquired_ns"].tolist() == b.locks["acquired_ns"].tolist()
    # A bare integer string is absolute, as on the command line.
    assert len(vm.window("1120", "1160").locks) == 2
    with pytest.raises(ConfigError, match="bad window bound '1x'"):
        vm.window("1x", None)


def test_select_by_callsite_glob(vm):
    assert vm.select(callsites="vcpu:*").locks["callsite"].astype(str).unique().tolist() == \
        ["vcpu:io", "vcpu:mmio"]
    with pytest.raises(ConfigError, match=r"unknown call site 'pio:\*'; call sites are main:dispatch, "
                                          "vcpu:io, vcpu:mmio"):
        vm.select(callsites="pio:*")


def test_report_threads_keep_the_waits_of_those_threads(vm):
    # vcpu0's one wait (30 ns) was behind main:dispatch (20) and the hand-off (10);
    # main's wait (behind vcpu:io) is not vcpu0's and is left out.
    sel = select.Selection(threads="vcpu0")
    caused = report.build(vm, "caused", sel)["caused"]
    assert caused[["holder_callsite", "caused_ns"]].values.tolist() == [["main:dispatch", 20],
                                                                        ["(hand-off)", 10]]
    assert caused["caused_pct"].tolist() == pytest.approx([200 / 3, 100 / 3])
    # The lock table counts only vcpu0's acquisitions (3 of 5).
    locks = report.build(vm, "locks", sel)["locks"]
    assert locks["acquisitions"].tolist() == [3]


def test_report_callsite_and_window(vm):
    sel = select.Selection(callsites=["vcpu:*"])
    cs = report.build(vm, "callsites", sel)["callsites"]
    assert sorted(cs["callsite"].astype(str)) == ["vcpu:io", "vcpu:mmio"]
    caused = report.build(vm, "caused", sel)["caused"]
    assert caused["holder_callsite"].tolist() == ["vcpu:io"]
    # The window 0..110 ns after the start holds rows 0 and 1 only.
    sel = select.Selection(window="0ns:110ns")
    locks = report.build(vm, "locks", sel)["locks"]
    assert locks["acquisitions"].tolist() == [2]
    with pytest.raises(ConfigError, match="outside the trace"):
        report.build(vm, "locks", select.Selection(window="1s:2s"))


def test_sort_keys_follow_perf_lock(mixed):
    # Every key the command line offers maps to a column a section has.
    assert tuple(select.SORT_KEYS) == cli.REPORT_SORT_KEYS
    built = report.build(mixed, "all")
    for key, col in select.SORT_KEYS.items():
        assert any(col in df.columns for df in built.values()), key
        have = [n for n, df in built.items() if col in df.columns]
        assert set(have) == {n for n, cols in report.SECTION_COLUMNS.items() if col in cols}, key
    for key in ("acquired", "wait_total", "hold_max", "avg_wait"):
        df = report.build(mixed, "callsites", select.Selection(sort=key))["callsites"]
        col = select.SORT_KEYS[key]
        vals = df[col].fillna(-1).tolist()
        assert vals == sorted(vals, reverse=True), key
    with pytest.raises(ConfigError, match="unknown sort key 'bogus'; keys are acquired, contended"):
        select.Selection(sort="bogus")
    with pytest.raises(ConfigError, match="orders none of the sections shown; it orders caused"):
        report.build(mixed, "exits", select.Selection(sort="caused"))


def test_cli_filters_json(mixed):
    r = kvmscope("report", MIXED, "--format", "json", "--section", "callsites", "--threads",
                 "vcpu0", "--callsite", "pio:*", "--sort", "acquired", "--top", "2")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    rows = out["callsites"]
    assert len(rows) == 2
    assert all(row["callsite"].startswith("pio:") for row in rows)
    assert rows[0]["acquisitions"] >= rows[1]["acquisitions"]
    assert "threads vcpu0" in out["trace"]["selection"]
    # vcpu0's acquisitions only: fewer than both vCPUs'.
    both = report.build(mixed, "callsites", select.Selection(callsites="pio:*"))["callsites"]
    assert rows[0]["acquisitions"] < both["acquisitions"].max()


@pytest.mark.parametrize("args, message", [
    (["--threads", "vcpu9"], "unknown thread 'vcpu9'; threads are vcpu0, vcpu1"),
    (["--callsite", "nope*"], "unknown call site 'nope*'; call sites are main:dispatch"),
    (["--sort", "nope"], "invalid choice: 'nope' (choose from 'acquired'"),
    (["--window", "5s:6s"], "is outside the trace"),
    (["--window", "oops"], "bad window 'oops'"),
])
def test_cli_bad_filters(args, message):
    r = kvmscope("report", MIXED, *args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert r.stdout == ""


def test_window_text_header(mixed):
    text = report.render(mixed, report.build(mixed, "locks", select.Selection(window="20ms:21ms")),
                         selection=select.Selection(window="20ms:21ms"))
    assert "selection: window 20ms:21ms" in text
    # A 1 ms window holds fewer acquisitions than the whole trace.
    full = report.build(mixed, "locks")["locks"]["acquisitions"].sum()
    cut = report.build(mixed, "locks", select.Selection(window="20ms:21ms"))["locks"]
    assert 0 < cut["acquisitions"].sum() < full
    assert isinstance(cut, pd.DataFrame)


def test_blockers_keep_the_waits_at_the_selected_call_sites(mixed):
    # `--callsite` on "who blocks whom": the waits of acquisitions at those
    # call sites, behind whichever holder; they add up to those call sites'
    # total wait, and a waiter that never acquires there has no row.
    everyone = report.build(mixed, "blockers")["blockers"]
    for site, waiters in (("main:dispatch", {"main"}), ("pio:*", {"vcpu0", "vcpu1"})):
        sel = select.Selection(callsites=[site])
        rows = report.build(mixed, "blockers", sel)["blockers"]
        sites = report.build(mixed, "callsites", sel)["callsites"]
        assert set(rows["waiter_name"].astype(str)) == waiters, site
        assert rows["wait_ns"].sum() == pytest.approx(sites["wait_total_ns"].sum(), abs=len(rows)), site
        assert len(rows) < len(everyone)
    # The thread filter and the call-site filter combine.
    rows = report.build(mixed, "blockers", select.Selection(threads="vcpu0", callsites="pio:blk"))["blockers"]
    assert set(rows["waiter_name"].astype(str)) == {"vcpu0"}
    assert 0 < rows["wait_ns"].sum() < everyone[everyone["waiter_name"] == "vcpu0"]["wait_ns"].sum()
