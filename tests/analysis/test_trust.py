"""Trustworthy analysis of imperfect and corrupt traces: lost records and
killed runs are reported as such and never as violations; missing and
corrupt files are one line and exit status 2."""

import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from kvmscope.analysis import Trace, TraceError
from kvmscope.analysis import cli
from kvmscope.analysis.synth import (generate, make_killed_trace, make_lossy_trace,
                                     make_trace, write_trace)

TRACES = os.path.join(os.path.dirname(__file__), "..", "..", "traces")
KVMSCOPE = shutil.which("kvmscope", path=os.path.dirname(sys.executable)) or "kvmscope"

EXIT_INCOMPLETE = 3


def run(capsys, *argv):
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def _meta(path):
    with open(os.path.join(path, "meta.json")) as f:
        return json.load(f)


def _set_meta(path, **changes):
    m = _meta(path)
    for k, v in changes.items():
        if v is None:
            m.pop(k, None)
        else:
            m[k] = v
    with open(os.path.join(path, "meta.json"), "w") as f:
        json.dump(m, f)


# --------------------------------------------------------------------------
# 1. lost records and killed runs: report the imperfection, not violations

def test_lossy_trace_reports_losses_and_no_violation(capsys, tmp_path):
    p = make_lossy_trace(tmp_path / "lossy", 5000, seed=3)
    status, out, err = run(capsys, "validate", p)
    assert status == EXIT_INCOMPLETE, out
    assert "prev_owner_mismatch" not in out and not re.search(r"\d violations in", out)
    lost = [l for l in out.splitlines() if l.startswith("lost ")]
    assert len(lost) == 6
    assert any(" on main between " in l for l in lost)
    assert any(" on vcpu0 between " in l for l in lost)
    assert out.splitlines()[-1] == (f"{p}: INCOMPLETE: {Trace.load(p).num_records} "
                                    "records, no violations in the data they cover")
    # The same records, claimed complete, do contradict themselves: the
    # checks are skipped only where the losses explain them.
    shutil.copytree(p, tmp_path / "claimed")
    os.remove(tmp_path / "claimed" / "losses.arrows")
    _set_meta(tmp_path / "claimed", format_version=1, records={})
    status, out, _ = run(capsys, "validate", tmp_path / "claimed", "--limit", 0)
    assert status == 1 and "prev_owner_mismatch" in out


def test_coverage_lists_each_loss_with_its_position(tmp_path):
    t = Trace.load(make_lossy_trace(tmp_path / "lossy", 5000, seed=3))
    cov = t.coverage()
    losses = t.losses
    assert list(cov["kind"]) == ["lost"] * len(losses) and len(losses) == 6
    assert cov["lost"].sum() == losses["lost"].sum() == \
        sum(r["lost"] for r in t.meta["records"].values())
    assert set(cov["thread_name"]) == {"main", "vcpu0", "vcpu1"}
    # The positions are the losses table's, in ns of the trace clock.
    merged = cov.merge(losses, left_on=["thread", "start_ns", "end_ns"],
                       right_on=["thread", "after_ns", "before_ns"])
    assert len(merged) == 6
    assert t.check().empty


def test_violation_in_covered_data_is_still_reported(capsys, tmp_path):
    tables = generate(3000, 3, 1, seed=5)
    # A loss on vcpu0 early in the run, and a lock record whose prev_owner
    # is wrong late in the run, where every thread's data is complete.
    from kvmscope.analysis.synth import drop_records
    lo = tables["locks"].column("acquired_ns")[0].as_py()
    tables, losses = drop_records(tables, [(1, lo, lo + 50_000)])
    locks = tables["locks"]
    prev = locks.column("prev_owner").to_numpy().copy()
    row = len(prev) - 20
    prev[row] = 2 if prev[row] != 2 else 1
    tables["locks"] = locks.set_column(locks.schema.get_field_index("prev_owner"),
                                       "prev_owner", pa.array(prev, pa.int16()))
    p = write_trace(tmp_path / "t", losses=losses, **tables)
    status, out, _ = run(capsys, "validate", p)
    assert status == 1
    assert f"locks.arrows row {row} " in out and "prev_owner_mismatch" in out
    assert "lost " in out and " on vcpu0 " in out
    assert out.splitlines()[-1].endswith("; the data is incomplete")


def test_format1_lossy_trace_unknown_positions(capsys, tmp_path):
    p = make_lossy_trace(tmp_path / "v1", 5000, seed=3, format_version=1)
    assert not os.path.exists(os.path.join(p, "losses.arrows"))
    t = Trace.load(p)
    assert len(t.losses) == 0
    cov = t.coverage()
    assert set(cov["kind"]) == {"lost_unplaced"}
    assert cov["start_ns"].isna().all() and cov["end_ns"].isna().all()
    status, out, _ = run(capsys, "validate", p)
    assert status == EXIT_INCOMPLETE
    assert "lost 18 records on vcpu0 at unknown times" in out
    assert not re.search(r"\d violations in", out)


def test_killed_trace_reports_where_data_ends(capsys, tmp_path):
    p = make_killed_trace(tmp_path / "killed", 5000, seed=3)
    status, out, err = run(capsys, "validate", p)
    assert status == EXIT_INCOMPLETE, out
    assert not re.search(r"\d violations in", out)
    killed = [l for l in out.splitlines() if l.startswith("killed: data ends at ")]
    assert len(killed) == 1
    ends = Trace.load(p).coverage().set_index("thread_name")["start_ns"]
    t0 = Trace.load(p).start_ns
    # main's data ends first: its records after that were never flushed.
    assert killed[0].startswith(f"killed: data ends at "
                                f"{(ends['main'] - t0) / 1e9:.4f} s (")
    assert "(main)" in killed[0] and "(vcpu1)" in killed[0]
    assert "state is 'running'" in err
    # The very same tables from a run said to be complete are inconsistent.
    _set_meta(p, state="complete")
    status, out, _ = run(capsys, "validate", p)
    assert status == 1 and "prev_owner_mismatch" in out


def test_failed_trace_reports_the_reason(capsys, tmp_path):
    p = make_killed_trace(tmp_path / "failed", 3000, seed=4, state="failed",
                          failure="write failed: No space left on device")
    status, out, _ = run(capsys, "validate", p)
    assert status == EXIT_INCOMPLETE
    assert "failed: write failed: No space left on device; data ends at " in out


def test_table_cut_short_in_a_complete_trace_is_incomplete(capsys, tmp_path):
    p = make_trace(tmp_path / "t", 3000, seed=2, batch_rows=500)
    f = os.path.join(p, "locks.arrows")
    with open(f, "r+b") as fh:
        fh.truncate(os.path.getsize(f) - 8 - 300)
    status, out, err = run(capsys, "validate", p)
    assert status == EXIT_INCOMPLETE
    assert "cut short: locks.arrows: truncated final batch dropped" in out
    assert not re.search(r"\d violations in", out)


def test_window_answers_coverage_for_the_whole_trace(tmp_path):
    t = Trace.load(make_killed_trace(tmp_path / "k", 3000, seed=3))
    w = t.window(t.start_ns, t.start_ns + 1_000_000)
    assert w.coverage().equals(t.coverage())
    assert w.check().empty


def test_complete_traces_have_full_coverage(capsys):
    for name in ("mixed-2vcpu", "timer-hlt-2vcpu"):
        t = Trace.load(os.path.join(TRACES, name))
        assert t.coverage().empty
        status, out, _ = run(capsys, "validate", os.path.join(TRACES, name))
        assert status == 0 and out.endswith("no violations\n")


# -- on real KVM ---------------------------------------------------------------

def _kvmscope(*args, timeout=120):
    return subprocess.run([KVMSCOPE, *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.kvm
def test_real_lossy_trace_validates_as_incomplete(tmp_path):
    out = tmp_path / "lossy"
    r = _kvmscope("run", "mixed", "--vcpus", 2, "--ring", 64, "-n", 2000,
                  "-q", "-o", out)
    assert r.returncode == 0, r.stderr
    lost = {k: v["lost"] for k, v in _meta(out)["records"].items() if v["lost"]}
    assert lost, "a 64-record ring should drop records"
    r = _kvmscope("validate", out)
    assert r.returncode == EXIT_INCOMPLETE, r.stdout + r.stderr
    assert "prev_owner_mismatch" not in r.stdout
    for name in lost:
        assert f" on {name} " in r.stdout
    assert "INCOMPLETE" in r.stdout.splitlines()[-1]


@pytest.mark.kvm
def test_real_killed_trace_validates_as_killed(tmp_path):
    out = tmp_path / "killed"
    p = subprocess.Popen([KVMSCOPE, "run", "mixed", "--vcpus", "2", "-n",
                          "100000000", "-q", "-o", str(out)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        locks = out / "locks.arrows"
        while not (locks.exists() and locks.stat().st_size > 100_000):
            assert time.monotonic() < deadline, "no batches flushed"
            time.sleep(0.05)
    finally:
        p.kill()
        p.wait(timeout=10)
    assert _meta(out)["state"] == "running"
    r = _kvmscope("validate", out)
    assert r.returncode == EXIT_INCOMPLETE, r.stdout + r.stderr
    assert not re.search(r"\d violations in", r.stdout)
    line = next(l for l in r.stdout.splitlines() if l.startswith("killed: "))
    assert "(main)" in line and "(vcpu0)" in line and "(vcpu1)" in line
