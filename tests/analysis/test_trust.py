"""Trustworthy analysis of imperfect and corrupt traces: lost records and
killed runs are reported as such and never as violations; missing and
corrupt files are one line and exit status 2."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from kvmscope.analysis import Trace
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
    from kvm.helpers import killed_run
    out = tmp_path / "killed"
    killed_run(out, 100_000)
    assert _meta(out)["state"] == "running"
    r = _kvmscope("validate", out)
    assert r.returncode == EXIT_INCOMPLETE, r.stdout + r.stderr
    assert not re.search(r"\d violations in", r.stdout)
    line = next(l for l in r.stdout.splitlines() if l.startswith("killed: "))
    assert "(main)" in line and "(vcpu0)" in line and "(vcpu1)" in line


# --------------------------------------------------------------------------
# 2. and 3. missing and corrupt input: one line and exit status 2, or a
# result; never a traceback, a hang or a read of something that is not a file

SAMPLE = os.path.join(TRACES, "timer-hlt-2vcpu")


@pytest.fixture
def sample(tmp_path):
    dst = tmp_path / "t"
    shutil.copytree(SAMPLE, dst)
    return str(dst)


def _commands(path, tmp):
    return [["report", path], ["validate", path],
            ["export", path, "--perfetto", os.path.join(tmp, "out.json")],
            ["plot", path, "-o", os.path.join(tmp, "out.png"), "--dpi", "40"],
            ["plot", path, "--kind", "contention", "-o",
             os.path.join(tmp, "out.png"), "--dpi", "40"],
            ["diff", SAMPLE, path, "--resamples", "100"]]


def every_command(capsys, path, tmp, error=None):
    """Run every command on *path*: with *error*, each must print exactly one
    line on stderr holding it and exit with 2; without, give a result."""
    for argv in _commands(path, str(tmp)):
        status, out, err = run(capsys, *argv)
        assert "Traceback" not in err, (argv, err)
        if error is not None:
            assert status == 2, (argv, status, out, err)
            lines = err.strip().splitlines()
            assert len(lines) == 1 and error in lines[0], (argv, err)
        else:
            assert status in ((0, 1, EXIT_INCOMPLETE) if argv[0] == "validate"
                              else (0, 1)), (argv, status, err)
            assert out.strip() or argv[0] in ("plot",), argv


def _rewrite(path, table_name, change):
    f = os.path.join(path, table_name + ".arrows")
    with open(f, "rb") as fh:
        t = ipc.open_stream(pa.py_buffer(fh.read())).read_all()
    t = change(t)
    with ipc.new_stream(f, t.schema) as w:
        w.write_table(t, max_chunksize=100)


def _replace_column(t, name, arr):
    i = t.schema.get_field_index(name)
    return t.set_column(i, pa.field(name, arr.type, nullable=arr.null_count > 0), arr)


@pytest.mark.parametrize("how, error", [
    ("delete", "locks.arrows: missing"),
    ("directory", "locks.arrows: not a regular file (a directory)"),
    ("loop", "locks.arrows: cannot read: Too many levels of symbolic links"),
    ("dangling", "locks.arrows: dangling symbolic link"),
    ("fifo", "locks.arrows: not a regular file (a FIFO)"),
    ("devzero", "locks.arrows: not a regular file (a character device)"),
    ("empty", "locks.arrows: no rows, but meta.json says it has 1209"),
])
def test_missing_table_file_is_an_error(capsys, sample, tmp_path, how, error):
    f = os.path.join(sample, "locks.arrows")
    os.remove(f)
    if how == "directory":
        os.mkdir(f)
    elif how == "loop":
        os.symlink("locks.arrows", f)
    elif how == "dangling":
        os.symlink("gone.arrows", f)
    elif how == "fifo":
        os.mkfifo(f)
    elif how == "devzero":
        os.symlink("/dev/zero", f)
    elif how == "empty":
        open(f, "wb").close()
    every_command(capsys, sample, tmp_path, error)


def test_any_missing_table_of_the_format_is_an_error(capsys, sample, tmp_path):
    # meta.json says 0 rows of aio: the file must still be there.
    assert _meta(sample)["tables"]["aio"] == 0
    os.remove(os.path.join(sample, "aio.arrows"))
    every_command(capsys, sample, tmp_path, "aio.arrows: missing")


def test_losses_file_is_required_from_format_2(capsys, tmp_path):
    p = make_lossy_trace(tmp_path / "v2", 2000, seed=1)
    os.remove(os.path.join(p, "losses.arrows"))
    every_command(capsys, p, tmp_path, "losses.arrows: missing")
    # A format-1 trace never had one.
    assert "losses.arrows" not in os.listdir(SAMPLE)
    every_command(capsys, SAMPLE, tmp_path)


TOO_BIG = "1" + "0" * 400


@pytest.mark.parametrize("key, raw, error", [
    ("config", "[1, 2]", "'config' is a list, expected an object"),
    ("start_ns", '"12"', "'start_ns' is a string, expected ns"),
    ("start_ns", "[1]", "'start_ns' is a list"),
    ("start_ns", str(2 ** 64), f"'start_ns' is {2 ** 64}, expected ns"),
    ("start_ns", TOO_BIG, "'start_ns' is an integer of 401 digits"),
    ("start_ns", "1.5", "'start_ns' is a number with a fraction"),
    ("start_ns", "true", "'start_ns' is a boolean"),
    ("end_ns", '"x"', "'end_ns' is a string"),
    ("end_ns", "-5", "'end_ns' is -5, expected ns"),
    ("end_ns", "NaN", "'end_ns' is not a finite number"),
    ("state", '"exploded"', "'state' is 'exploded', expected one of running"),
    ("records", '{"vcpu0": 5}', "'records.vcpu0' is 5, expected an object"),
    ("records", '{"vcpu0": {"lost": "3"}}', "'records.vcpu0.lost' is a string"),
    ("tables", '{"locks": -1}', "'tables.locks' is -1, expected a row count"),
    ("config", '{"guest": ["x"]}', "'config.guest' is a list, expected a string"),
    ("failure", "[]", "'failure' is a list, expected a string"),
])
def test_meta_fields_of_the_wrong_type(capsys, sample, tmp_path, key, raw, error):
    m = _meta(sample)
    m[key] = "@RAW@"
    with open(os.path.join(sample, "meta.json"), "w") as f:
        f.write(json.dumps(m).replace('"@RAW@"', raw))
    every_command(capsys, sample, tmp_path, "meta.json: " + error)


@pytest.mark.parametrize("how, error", [
    ("huge", "meta.json: 17825792 bytes, more than the 16 MiB"),
    ("devzero", "meta.json: not a regular file (a character device)"),
    ("directory", "meta.json: not a regular file (a directory)"),
    ("fifo", "meta.json: not a regular file (a FIFO)"),
    ("deep", "meta.json: corrupt JSON: maximum recursion depth"),
    ("utf8", "meta.json: corrupt JSON: 'utf-8' codec can't decode"),
    ("list", "meta.json: expected a JSON object, got a list"),
])
def test_meta_file_that_cannot_be_used(capsys, sample, tmp_path, how, error):
    f = os.path.join(sample, "meta.json")
    if how == "huge":
        with open(f, "r+b") as fh:      # sparse
            fh.truncate(17 << 20)
    elif how in ("devzero", "directory", "fifo"):
        os.remove(f)
        {"devzero": lambda: os.symlink("/dev/zero", f), "directory": lambda: os.mkdir(f),
         "fifo": lambda: os.mkfifo(f)}[how]()
    elif how == "deep":
        with open(f, "w") as fh:
            fh.write("[" * 100_000)
    elif how == "utf8":
        with open(f, "rb") as fh:
            data = fh.read()
        with open(f, "wb") as fh:
            fh.write(data.replace(b"timer-hlt", b"timer\xffhlt"))
    elif how == "list":
        with open(f, "w") as fh:
            fh.write("[]")
    every_command(capsys, sample, tmp_path, error)


def _bad_utf8(arr):
    bufs = arr.buffers()
    data = bytearray(bufs[2].to_pybytes())
    data[0] = 0xFF
    return pa.Array.from_buffers(arr.type, len(arr), [bufs[0], bufs[1],
                                                      pa.py_buffer(bytes(data))])


def test_invalid_utf8_in_a_string_column(capsys, sample, tmp_path):
    _rewrite(sample, "threads", lambda t: _replace_column(
        t, "name", _bad_utf8(t.column("name").combine_chunks())))
    every_command(capsys, sample, tmp_path,
                  "threads.arrows: corrupt Arrow data: Column 2: In chunk 0: "
                  "Invalid: Invalid UTF8")


def test_invalid_utf8_in_a_dictionary(capsys, sample, tmp_path):
    def change(t):
        c = t.column("callsite").combine_chunks()
        return _replace_column(t, "callsite", pa.DictionaryArray.from_arrays(
            c.indices, _bad_utf8(c.dictionary), safe=False))
    _rewrite(sample, "locks", change)
    every_command(capsys, sample, tmp_path, "locks.arrows: corrupt Arrow data")


def test_dictionary_index_out_of_range(capsys, sample, tmp_path):
    def change(t):
        c = t.column("reason").combine_chunks()
        idx = c.indices.to_numpy().copy()
        idx[3] = 999
        return _replace_column(t, "reason", pa.DictionaryArray.from_arrays(
            pa.array(idx), c.dictionary, safe=False))
    _rewrite(sample, "exits", change)
    every_command(capsys, sample, tmp_path,
                  "exits.arrows: corrupt Arrow data: Column 2: In chunk 0: "
                  "Invalid: Dictionary indices invalid")


def test_repeated_dictionary_values_still_load(capsys, sample, tmp_path):
    def change(t):
        c = t.column("callsite").combine_chunks()
        d = c.dictionary.to_pylist()
        d[1] = d[0]
        return _replace_column(t, "callsite", pa.DictionaryArray.from_arrays(
            c.indices, pa.array(d)))
    _rewrite(sample, "locks", change)
    every_command(capsys, sample, tmp_path)


def test_nulls_where_not_allowed(capsys, sample, tmp_path):
    def change(t):
        r = t.column("released_ns").combine_chunks()
        mask = np.zeros(len(r), bool)
        mask[5] = True
        return _replace_column(t, "released_ns", pa.array(
            r.to_numpy(), pa.int64(), mask=mask))
    _rewrite(sample, "locks", change)
    every_command(capsys, sample, tmp_path,
                  "locks.arrows: column 'released_ns' has 1 nulls but is not nullable")


@pytest.mark.parametrize("value", [-1, np.iinfo(np.int64).max, np.iinfo(np.int64).min])
def test_timestamps_out_of_range(capsys, sample, tmp_path, value):
    def change(t):
        e = t.column("exit_ns").to_numpy().copy()
        e[7] = value
        return _replace_column(t, "exit_ns", pa.array(e))
    _rewrite(sample, "exits", change)
    every_command(capsys, sample, tmp_path,
                  f"exits.arrows: column 'exit_ns' has {value} at row 7, outside 0 .. ")


def test_timestamps_out_of_order_are_violations(capsys, sample, tmp_path):
    def change(t):
        r = t.column("released_ns").to_numpy().copy()
        r[::7] = r[::7] - 5_000_000
        return _replace_column(t, "released_ns", pa.array(r))
    _rewrite(sample, "locks", change)
    every_command(capsys, sample, tmp_path)
    status, out, _ = run(capsys, "validate", sample)
    assert status == 1 and "lock_released_before_acquired" in out


@pytest.mark.parametrize("ids", [(-32768, 32767), (-1, 300)])
def test_unknown_thread_ids(capsys, sample, tmp_path, ids):
    for table in ("locks", "exits", "irqs"):
        def change(t):
            th = t.column("thread").to_numpy().copy()
            for k, v in enumerate(ids):
                th[k::3] = v
            return _replace_column(t, "thread", pa.array(th, pa.int16()))
        _rewrite(sample, table, change)
    every_command(capsys, sample, tmp_path)
    for kind in ("timeline", "wait", "exits") if ids[0] < -1 else ():
        by = [] if kind == "timeline" else ["--by", "thread"]
        status, _, err = run(capsys, "plot", sample, "--kind", kind, *by,
                             "-o", tmp_path / "o.png", "--dpi", "40")
        assert status == 0, (kind, err)
    status, out, _ = run(capsys, "validate", sample)
    assert status == 1 and "unknown_thread" in out


def test_trace_path_that_is_not_a_directory(capsys, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    every_command(capsys, str(f), tmp_path, "not a directory")
    every_command(capsys, str(tmp_path / "nope"), tmp_path, "not found")


def test_aborted_trace_reports_it(capsys, tmp_path):
    p = make_killed_trace(tmp_path / "aborted", 3000, seed=4, state="aborted")
    status, out, err = run(capsys, "validate", p)
    assert status == EXIT_INCOMPLETE
    assert "aborted (a second interrupt): data ends at " in out
    assert "state is 'aborted'" in err


def test_thousands_of_thread_ids_stay_bounded(capsys, tmp_path, monkeypatch):
    """A damaged thread column with ids spread over the int16 range: the
    who-blocks-whom table is built from the pairs that occur, not a
    threads x threads grid."""
    from kvmscope.analysis import blame
    tables = generate(4000, 3, 1, seed=9)
    locks = tables["locks"]
    th = np.random.default_rng(1).integers(-32768, 32767, locks.num_rows)
    tables["locks"] = locks.set_column(0, "thread", pa.array(th.astype(np.int16)))
    p = write_trace(tmp_path / "t", **tables)
    t = Trace.load(p)
    sparse = t.blockers()
    assert len(sparse) > 100 and sparse["wait_ns"].sum() > 0
    status, out, _ = run(capsys, "report", p, "--section", "blockers")
    assert status == 0 and "thread " in out
    # The dense bins of a normal trace give the same figures as the sparse ones.
    small = write_trace(tmp_path / "small", **generate(4000, 3, 1, seed=9))
    dense = Trace.load(small).blockers()
    monkeypatch.setattr(blame, "_DENSE_BINS", 0)
    assert Trace.load(small).blockers().equals(dense)
    # Plots keep to a readable number of rows.
    from kvmscope.analysis import plot
    fig = plot.plot_timeline(t)
    assert "more threads not shown" in fig.axes[0].get_title()
    assert len(fig.axes[0].get_yticks()) <= 48 + 1
    fig = plot.plot_contention(t)
    labels = [x.get_text() for x in fig.axes[0].get_yticklabels()]
    assert len(labels) == 40 and labels[-1].startswith("other (")


# --------------------------------------------------------------------------
# 5. impossible arguments of the library functions: a ValueError that says
# which and what is allowed

@pytest.fixture(scope="module")
def small_trace():
    return Trace.load(os.path.join(TRACES, "timer-hlt-2vcpu"))


@pytest.mark.parametrize("call, message", [
    (lambda t, tmp: t.check(tolerance_ns=-1), "tolerance_ns must be an integer >= 0"),
    (lambda t, tmp: t.check(tolerance_ns=1.5), "tolerance_ns must be an integer >= 0"),
    (lambda t, tmp: __import__("kvmscope.analysis.report", fromlist=["x"]).render(
        t, fmt="text", top=-1), "top must be an integer >= 0"),
    (lambda t, tmp: t.exit_stats("nonsense"), "unknown column 'nonsense'"),
    (lambda t, tmp: t.queue_depth("nope"), "unknown queue 'nope'"),
    (lambda t, tmp: _plot().plot_contention(t, bins=0), "bins must be an integer, 1 .. 100000"),
    (lambda t, tmp: _plot().plot_exit_rate(t, bins=-5), "bins must be an integer, 1 .. 100000"),
    (lambda t, tmp: _plot().plot_exit_rate(t, bins=10 ** 9), "bins must be an integer"),
    (lambda t, tmp: _plot().plot_timeline(t, max_arrows=-1), "max_arrows must be"),
    (lambda t, tmp: _plot().plot_distributions(t, max_groups=0), "max_groups must be"),
    (lambda t, tmp: _plot().busiest_window(t, width_ns=0), "width_ns must be"),
    (lambda t, tmp: _plot().save(_plot().plot_exit_rate(t), os.path.join(tmp, "x.png"),
                                 dpi=5), "dpi must be an integer, 10 .. 1200"),
    (lambda t, tmp: _plot().save(_plot().plot_exit_rate(t), os.path.join(tmp, "x.png"),
                                 dpi=5000), "dpi must be an integer, 10 .. 1200"),
    (lambda t, tmp: _perfetto().export_perfetto(t, os.path.join(tmp, "x.json"),
                                                max_events=-1), "max_events must be"),
    (lambda t, tmp: _perfetto().export_perfetto(t, os.path.join(tmp, "x.json"),
                                                window=(10, 5)), "start < end"),
])
def test_impossible_arguments_are_value_errors(small_trace, tmp_path, call, message):
    with pytest.raises(ValueError, match=re.escape(message)) as e:
        call(small_trace, str(tmp_path))
    assert "\n" not in str(e.value)


def _plot():
    from kvmscope.analysis import plot
    return plot


def _perfetto():
    from kvmscope.analysis import perfetto
    return perfetto


def test_report_says_how_the_data_is_incomplete(capsys, tmp_path):
    p = make_killed_trace(tmp_path / "killed", 3000, seed=3)
    status, out, _ = run(capsys, "report", p, "--section", "locks")
    assert status == 0
    assert any(l.startswith("incomplete: killed: data ends at ") for l in out.splitlines())
    status, out, _ = run(capsys, "report", p, "--section", "locks", "--format", "json")
    info = json.loads(out)["trace"]
    assert info["complete"] is False and info["coverage"][0].startswith("killed: ")
    status, out, _ = run(capsys, "report", SAMPLE, "--section", "locks", "--format", "json")
    info = json.loads(out)["trace"]
    assert info["complete"] is True and info["coverage"] == []
