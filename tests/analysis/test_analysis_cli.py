"""The report and validate commands: output formats and exit statuses."""

import argparse
import csv
import io
import json
import os
import subprocess
import sys

import pandas as pd
import pytest

import kvmscope
from kvmscope.analysis import TABLES, Trace, cli
from kvmscope.analysis.synth import make_trace, write_trace

THREADS = pd.DataFrame({"thread": [1, 2], "tid": [101, 102],
                        "name": ["vcpu0", "main"], "role": ["vcpu", "main"]})
LOCKS = pd.DataFrame({
    "thread": [1, 2, 1], "callsite": ["vcpu:io", "main:dispatch", "vcpu:io"],
    "request_ns": [0, 50, 130], "acquired_ns": [0, 120, 160],
    "released_ns": [100, 150, 2_000_000]})


@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    return make_trace(tmp_path_factory.mktemp("cli") / "g", 2000, seed=2)


@pytest.fixture
def small(tmp_path):
    return write_trace(tmp_path / "s", threads=THREADS, locks=LOCKS)


def run(capsys, *argv):
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_report_text_has_every_section_with_units(capsys, gen):
    status, out, err = run(capsys, "report", gen)
    assert status == 0 and err == ""
    for title in ("Exits by reason", "Locks (lock_stat", "Locks by call site",
                  "Who blocks whom", "Bottom halves", "Timers", "AIO latency",
                  "Main loop"):
        assert title in out
    assert "us " in out or "us\n" in out              # humanised durations
    assert "vcpu:io" in out and "bql" in out


def test_report_text_small_trace_values(capsys, small):
    status, out, _ = run(capsys, "report", small, "--section", "locks")
    lines = out.splitlines()
    head = next(i for i, l in enumerate(lines) if l.strip().startswith("lock"))
    row = lines[head + 2].split()
    # bql: 3 acquired, 2 contended, 66.7%, 2 hand-offs; waits 70 and 30.
    assert row[:5] == ["bql", "3", "2", "66.7%", "2"]
    assert "100ns" in row and "2.00ms" in row         # wait total, hold max
    assert "Exits" not in out


def test_report_json_is_raw_and_complete(capsys, small):
    status, out, _ = run(capsys, "report", small, "--format", "json")
    doc = json.loads(out)
    assert set(doc) == {"trace", "caused", "exits", "addrs", "locks", "callsites",
                        "blockers", "bh", "timers", "aio", "loop", "cpu"}
    # The drill-downs come with --section NAME or all.
    _, out, _ = run(capsys, "report", small, "--format", "json", "--section", "all")
    assert {"fairness", "pingpong", "convoys"} <= set(json.loads(out))
    lock = doc["locks"][0]
    assert lock["wait_total_ns"] == 100 and lock["hold_max_ns"] == 1_999_840
    assert isinstance(lock["hold_p50_ns"], int)
    assert doc["exits"] == [] and doc["trace"]["records"]["locks"] == 3
    cs = {r["callsite"]: r for r in doc["callsites"]}
    assert cs["main:dispatch"]["wait_p99_ns"] == 70


def test_report_csv_sections(capsys, small):
    _, out, _ = run(capsys, "report", small, "--format", "csv",
                    "--section", "callsites")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert {r["callsite"] for r in rows} == {"vcpu:io", "main:dispatch"}
    _, out, _ = run(capsys, "report", small, "--format", "csv")
    assert out.startswith("# caused\n")
    assert "\n# locks\nlock,acquisitions," in out


def test_report_markdown_and_top(capsys, gen):
    _, out, _ = run(capsys, "report", gen, "--format", "markdown",
                    "--section", "blockers", "--top", "3")
    table = [l for l in out.splitlines() if l.startswith("|")]
    assert len(table) == 2 + 3
    assert table[1].startswith("|---|---|---|---:")
    assert "more rows not shown" in out


def test_validate_clean(capsys, gen):
    status, out, err = run(capsys, "validate", gen)
    assert status == 0
    assert out.strip().endswith("no violations") and "OK" in out


def test_validate_violations(capsys, tmp_path):
    bad = LOCKS.assign(acquired_ns=[0, 90, 160])        # 90 < 100: overlap
    p = write_trace(tmp_path / "b", threads=THREADS, locks=bad)
    status, out, _ = run(capsys, "validate", p)
    assert status == 1
    lines = out.splitlines()
    assert lines[0] == ("locks.arrows row 1 (main at 90 ns): lock_overlap: "
                        "'bql' acquired at 90 while thread 1 held it until 100")
    assert lines[-1].endswith("1 violations in 3 records (1 lock_overlap)")


def test_validate_unreadable(capsys, tmp_path):
    status, out, err = run(capsys, "validate", str(tmp_path / "missing"))
    assert status == 2 and out == ""
    assert err.count("\n") == 1 and "trace directory not found" in err
    status, _, err = run(capsys, "report", str(tmp_path / "missing"))
    assert status == 2 and err.startswith("kvmscope report: error:")


def test_register_adds_commands_to_a_parent_cli(small):
    parser = argparse.ArgumentParser(prog="kvmscope")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run")                                # the runner's own
    cli.register(sub)
    args = parser.parse_args(["validate", small])
    assert args.func is cli.validate_command


def test_python_dash_m_exit_codes(tmp_path, gen):
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(kvmscope.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(
        [root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))

    def pym(*args):
        return subprocess.run([sys.executable, "-m", "kvmscope.analysis", *args],
                              capture_output=True, text=True, env=env,
                              timeout=60)
    r = pym("validate", gen)
    assert r.returncode == 0, r.stderr
    r = pym("validate", str(tmp_path / "nope"))
    assert r.returncode == 2 and "not found" in r.stderr
    r = pym("report", gen, "--format", "json", "--section", "exits")
    assert r.returncode == 0 and json.loads(r.stdout)["exits"]


@pytest.mark.parametrize("fmt", ["text", "markdown", "json", "csv"])
def test_report_on_a_trace_with_no_records(capsys, tmp_path, fmt):
    p = tmp_path / "empty"
    p.mkdir()
    (p / "meta.json").write_text('{"format": "kvmscope-trace", '
                                 '"format_version": 1, "state": "running"}')
    for name in TABLES:         # a run killed before its first flush
        if name != "losses":
            (p / f"{name}.arrows").write_bytes(b"")
    status, out, err = run(capsys, "report", str(p), "--format", fmt)
    assert status == 0
    if fmt == "json":
        doc = json.loads(out)
        assert doc["locks"] == [] and doc["trace"]["warnings"]
    if fmt == "text":
        assert "(no records)" in out and "warning: meta.json" in out


def test_validate_json(capsys, tmp_path, gen):
    status, out, _ = run(capsys, "validate", gen, "--format", "json")
    doc = json.loads(out)
    assert status == 0 and doc["exit_status"] == 0 and doc["violations"] == 0
    assert doc["rows"] == [] and doc["records"] > 0
    bad = LOCKS.assign(acquired_ns=[0, 90, 160])
    p = write_trace(tmp_path / "b", threads=THREADS, locks=bad)
    status, out, _ = run(capsys, "validate", p, "--format", "json", "--limit", "1")
    doc = json.loads(out)
    assert status == 1 and doc["exit_status"] == 1
    assert doc["violations"] == 1 and doc["by_kind"] == {"lock_overlap": 1}
    row = doc["rows"][0]
    assert (row["table"], row["row"], row["thread_name"], row["ts_ns"]) == ("locks", 1, "main", 90)


def test_validate_json_on_incomplete_data(capsys, tmp_path):
    from kvmscope.analysis.synth import make_killed_trace
    p = make_killed_trace(tmp_path / "killed", 2000, seed=3)
    status, out, _ = run(capsys, "validate", p, "--format", "json")
    doc = json.loads(out)
    assert status == doc["exit_status"] == 3 and doc["violations"] == 0
    assert doc["complete"] is False
    assert any(line.startswith("killed: data ends at ") for line in doc["coverage"])


def test_report_limit_and_its_top_alias_agree(capsys, gen):
    outs = [run(capsys, "report", gen, "--section", "blockers", opt, "2")[1]
            for opt in ("--limit", "--top")]
    assert outs[0] == outs[1] and "7 more rows (--limit 0 shows all)" in outs[0]


def test_the_cli_choices_are_the_library_ones():
    # kvmscope.cli keeps its own copy so that building the parser loads no pandas
    from kvmscope import cli as top
    from kvmscope.analysis import perfetto, plot, regress, report
    assert top.REPORT_FORMATS == report.FORMATS
    assert top.REPORT_SECTIONS == tuple(report.SECTIONS)
    assert (top.DIFF_METRICS, top.DIFF_STATS, top.DIFF_FORMATS) == \
        (regress.METRICS, regress.STATS, regress.FORMATS)
    assert top.PLOT_KINDS == plot.KINDS
    assert top.EXPORT_MAX_EVENTS == perfetto.DEFAULT_MAX_EVENTS


def test_analysis_commands_are_registered_explicitly():
    # a command whose module is broken fails loudly when it runs; it never vanishes
    from kvmscope import cli as top
    names = set(top.build_parser()._subparsers._group_actions[0].choices)
    assert names == {"run", "demo", "guests", "info", "report", "validate",
                     "diff", "plot", "export", "path", "convert", "store", "sql", "history",
                     "replay", "whatif", "import", "qemu"}
    assert set(cli.COMMANDS) == {"cmd_report", "validate_command", "cmd_diff",
                                 "cmd_plot", "cmd_export", "cmd_path", "cmd_convert",
                                 "cmd_store_add", "cmd_store_list", "cmd_sql", "cmd_history",
                                 "cmd_replay", "cmd_whatif"}


def test_validate_counts_violations_by_kind_in_a_table(capsys, tmp_path):
    bad = pd.DataFrame({
        "thread": [1, 2, 1, 2], "callsite": ["vcpu:io", "main:dispatch"] * 2,
        "request_ns": [0, 50, 130, 150], "acquired_ns": [0, 90, 160, 170],
        "released_ns": [100, 150, 2_000_000, 2_000_100]})          # 2 overlaps
    p = write_trace(tmp_path / "b2", threads=THREADS, locks=bad)
    status, out, _ = run(capsys, "validate", p)
    assert status == 1
    lines = out.splitlines()
    head = lines.index("Violations by kind") + 1
    assert lines[head].split() == ["kind", "violations", "first"]
    assert lines[head + 2].split() == ["lock_overlap", "2", "locks.arrows", "row", "1"]
    assert lines[-1].endswith("2 violations in 4 records (2 lock_overlap)")


def test_validate_names_rows_in_the_file_that_holds_them(capsys, tmp_path):
    bad = pd.DataFrame({
        "thread": [1, 2, 1, 2], "callsite": ["vcpu:io", "main:dispatch"] * 2,
        "request_ns": [0, 50, 130, 150], "acquired_ns": [0, 90, 160, 170],
        "released_ns": [100, 150, 2_000_000, 2_000_100]})          # 2 overlaps
    Trace.load(write_trace(tmp_path / "s", threads=THREADS, locks=bad)).to_parquet(tmp_path / "p")
    status, out, _ = run(capsys, "validate", tmp_path / "p")
    assert status == 1
    assert "locks.parquet row 1" in out and ".arrows" not in out


def test_text_output_to_a_pipe_is_plain_and_complete(capsys, gen):
    # Not a terminal: no colour, no pager, every column at its natural width.
    _, out, _ = run(capsys, "report", gen, "--section", "locks")
    assert "\x1b" not in out and "left out" not in out
    head = next(l for l in out.splitlines() if l.strip().startswith("lock "))
    assert head.split()[-1] == "hold_max"
