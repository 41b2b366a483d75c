"""Regression reports (kvmscope diff) on synthetic traces: the statistics,
the decision rule (no false alarm on same-distribution runs, detection of a
known shift, between-run variation), filters, exit statuses and formats."""

import itertools
import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from kvmscope.analysis import Trace, diff
from kvmscope.analysis import cli
from kvmscope.analysis.regress import (DiffError, _run_interval,
                                       hodges_lehmann, holm, mann_whitney,
                                       parse_ns, parse_threshold)
from kvmscope.analysis.synth import to_arrow, write_trace

SITES = {"pio:a": 2000, "pio:b": 500}     # median hold per call site, ns


def locks_frame(seed, n=2000, run_sd=0.0, shift=None, sites=SITES,
                contention=0.3):
    """Lock records of one run: lognormal holds around each call site's
    median, scaled by a run-level factor exp(N(0, run_sd)) (the machine's
    mood that run), plus *shift* ns at the given call sites."""
    rng = np.random.default_rng(seed)
    names = np.array(list(sites))
    which = rng.integers(0, len(names), n)
    median = np.array([sites[s] for s in names])[which]
    hold = median * np.exp(rng.normal(0, run_sd)) * rng.lognormal(0, 0.4, n)
    hold = hold.astype(np.int64)
    for site, ns in (shift or {}).items():
        hold[names[which] == site] += ns
    wait = np.where(rng.random(n) < contention,
                    rng.lognormal(np.log(800), 0.5, n), 0).astype(np.int64)
    released = np.cumsum(rng.integers(100, 3000, n) + hold + wait)
    acquired = released - hold
    return pd.DataFrame({"thread": np.arange(n) % 2 + 1,
                         "callsite": names[which],
                         "request_ns": acquired - wait,
                         "acquired_ns": acquired, "released_ns": released})


def run(seed, **kw):
    """An in-memory trace of one synthetic run."""
    locks = to_arrow("locks", locks_frame(seed, **kw))
    return Trace.from_arrow({"locks": locks})


def group(seeds, **kw):
    return [run(s, **kw) for s in seeds]


def row(result, callsite, lock="bql"):
    t = result.table
    return t[(t["lock"] == lock) & (t["callsite"] == callsite)].iloc[0]


# --------------------------------------------------------------------------
# statistics

def test_mann_whitney_matches_brute_force_with_ties():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 8, 60)
    b = rng.integers(1, 9, 45)
    u, p, delta = mann_whitney(a, b)
    greater = (b[:, None] > a[None, :]).sum()
    ties = (b[:, None] == a[None, :]).sum()
    assert u == pytest.approx(greater + ties / 2)
    assert delta == pytest.approx(((b[:, None] > a).sum()
                                   - (b[:, None] < a).sum()) / (60 * 45))
    # Tie-corrected normal approximation with continuity correction.
    n0, n1 = 60, 45
    t = np.unique(np.r_[a, b], return_counts=True)[1]
    var = n0 * n1 / 12 * (n0 + n1 + 1 - (t ** 3 - t).sum()
                          / ((n0 + n1) * (n0 + n1 - 1)))
    z = (abs(u - n0 * n1 / 2) - 0.5) / np.sqrt(var)
    from math import erfc, sqrt
    assert p == pytest.approx(erfc(z / sqrt(2)))
    assert mann_whitney(a, a)[1] == pytest.approx(1.0)


def test_hodges_lehmann_is_median_of_pairwise_differences():
    rng = np.random.default_rng(4)
    a, b = rng.integers(0, 1000, 301), rng.integers(200, 1500, 201)
    assert hodges_lehmann(a, b) == pytest.approx(
        np.median(b[:, None] - a[None, :]), abs=1)


def test_holm_run_interval_and_parsers():
    assert holm([0.01, 0.04, 0.03, np.nan]).round(3)[:3].tolist() == \
        [0.03, 0.06, 0.06]
    # 2 runs a side, doubled: log ratio log(2) +- t(0.975, df=2) * se.
    lo, hi = _run_interval([100, 110], [200, 220], 0.05)
    x, y = np.log([100, 110]), np.log([200, 220])
    se = np.sqrt((((x - x.mean()) ** 2).sum() + ((y - y.mean()) ** 2).sum())
                 / 2 * (1 / 2 + 1 / 2))
    assert lo == pytest.approx(np.expm1(np.log(2) - 4.3027 * se), rel=1e-4)
    assert hi == pytest.approx(np.expm1(np.log(2) + 4.3027 * se), rel=1e-4)
    assert np.isnan(_run_interval([100], [200], 0.05)).all()
    assert parse_threshold("10%") == pytest.approx(0.1)
    assert parse_threshold("2.5") == pytest.approx(0.025)
    assert parse_ns("1.5us") == 1500 and parse_ns("2ms") == 2_000_000
    for bad in ("fast", "-5ns", "nan"):
        with pytest.raises(DiffError, match="bad duration"):
            parse_ns(bad)
    for bad in ("ten", "-5%", "nan"):
        with pytest.raises(DiffError):
            parse_threshold(bad)


def test_described_percentiles_match_lock_stats():
    t = run(5)
    r = diff(t, t)
    stats = t.lock_stats(["lock", "callsite"]).set_index("callsite")
    for site in SITES:
        got = row(r, site)
        assert got["base_p50_ns"] == stats.loc[site, "hold_p50_ns"]
        assert got["base_p99_ns"] == stats.loc[site, "hold_p99_ns"]
        assert got["base_max_ns"] == stats.loc[site, "hold_max_ns"]
        assert got["base_count"] == stats.loc[site, "acquisitions"]
        assert got["base_total_ns"] == stats.loc[site, "hold_total_ns"]
    assert (r.table["status"] == "unchanged").all()
    assert (r.table["rel_change"] == 0).all()


# --------------------------------------------------------------------------
# the decision rule

@pytest.mark.parametrize("stat", ["p50", "p90", "p99", "mean", "total"])
def test_no_false_positive_on_same_distribution_single_runs(stat):
    flagged = [s for s in range(25)
               if diff(run(2 * s), run(2 * s + 1), stat=stat, min_delta_ns=0,
                       resamples=500).regressed]
    assert flagged == []


def test_no_false_positive_on_groups_with_between_run_variation():
    # Each run has its own +-10% mood: pooled samples of 3 runs differ
    # "significantly" between groups, but not beyond the between-run noise.
    flagged = []
    for s in range(20):
        base = group(range(100 * s, 100 * s + 3), run_sd=0.1)
        new = group(range(100 * s + 50, 100 * s + 53), run_sd=0.1)
        r = diff(base, new, min_delta_ns=0, resamples=500)
        if r.regressed:
            flagged.append(s)
    assert flagged == []


def test_groups_are_judged_against_between_run_variation():
    # Candidate runs a bit slower by chance (run factors ~ +12% on
    # average): the pooled test is overwhelming, the verdict is not.
    base = [run(s, run_sd=0, sites={k: v * f for k, v in SITES.items()})
            for s, f in zip((1, 2, 3), (1.0, 1.15, 0.88))]
    new = [run(s, run_sd=0, sites={k: v * f for k, v in SITES.items()})
           for s, f in zip((4, 5, 6), (1.15, 0.98, 1.25))]
    r = diff(base, new)
    a = row(r, "pio:a")
    assert a["p_adj"] < 1e-6
    assert a["rel_change"] > 0.1
    assert a["status"] == "unchanged"
    assert a["run_ci_low"] < 0.1 and a["ci_low"] <= a["run_ci_low"]
    # The same runs with a consistent +40% at pio:a are a regression.
    new = [run(s, run_sd=0, sites={"pio:a": 2800 * f, "pio:b": 500 * f})
           for s, f in zip((4, 5, 6), (1.02, 0.98, 1.04))]
    base = [run(s, run_sd=0, sites={k: v * f for k, v in SITES.items()})
            for s, f in zip((1, 2, 3), (1.0, 1.03, 0.97))]
    r = diff(base, new)
    assert row(r, "pio:a")["status"] == "regressed"
    assert row(r, "pio:b")["status"] == "unchanged"


@pytest.mark.parametrize("runs", [1, 3])
def test_lengthened_critical_section_is_found_and_named(runs):
    base = group(range(runs), run_sd=0.05)
    new = group(range(10, 10 + runs), run_sd=0.05, shift={"pio:b": 1000})
    r = diff(base, new)
    assert r.regressed and r.exit_status == 1
    b = row(r, "pio:b")
    assert b["status"] == "regressed"
    assert b["ci_low"] > 0.1 and b["delta_ci_low_ns"] >= 100
    assert b["cliffs_delta"] > 0.8
    assert b["hl_shift_ns"] == pytest.approx(1000, rel=0.15)
    assert row(r, "pio:a")["status"] == "unchanged"
    assert set(r.regressions["callsite"]) <= {"pio:b", "*"}
    assert "pio:b" in r.verdict()


def test_many_distinct_values_use_rounded_histograms():
    # 20000 holds per run around 5-20 us: more distinct values than the
    # bootstrap keeps exactly (4096), so it works on 3 significant digits.
    slow = {"pio:a": 20_000, "pio:b": 5_000}
    base, same = run(1, n=20000, sites=slow), run(2, n=20000, sites=slow)
    assert len(np.unique(base.locks.hold_ns)) > 4096
    assert not diff(base, same, resamples=500).regressed
    r = diff(base, run(3, n=20000, sites=slow, shift={"pio:a": 4000}),
             resamples=500)
    assert row(r, "pio:a")["status"] == "regressed"
    assert row(r, "pio:a")["ci_low"] > 0.1
    assert row(r, "pio:b")["status"] == "unchanged"


def test_faster_is_improved_not_regressed():
    r = diff(run(1), run(2, sites={"pio:a": 1000, "pio:b": 500}))
    assert row(r, "pio:a")["status"] == "improved"
    assert not r.regressed and r.exit_status == 0


def test_min_delta_and_threshold_gate_small_changes():
    base, new = run(1), run(2, sites={"pio:a": 2000, "pio:b": 650})
    assert row(diff(base, new), "pio:b")["status"] == \
        "regressed"                                   # +30%, +150 ns
    r = diff(base, new, min_delta_ns="300ns")
    assert row(r, "pio:b")["status"] == "unchanged"
    assert "min-delta" in row(r, "pio:b")["reason"]
    r = diff(base, new, threshold="50%")
    assert row(r, "pio:b")["status"] == "unchanged"
    assert "reaches inside" in row(r, "pio:b")["reason"]


def test_wait_metric_uses_contended_acquisitions_and_min_count():
    base = run(1, contention=0.3)
    r = diff(base, run(2, contention=0.3), metric="wait")
    lk = base.locks
    a = row(r, "pio:a")
    contended = lk.contended & (lk.callsite == "pio:a")
    assert a["base_count"] == int(contended.sum())
    r = diff(base, run(2, contention=0.005), metric="wait", min_count=30)
    assert row(r, "pio:a")["status"] == "insufficient"


def test_new_and_gone_call_sites():
    r = diff(run(1, sites={"pio:a": 2000}), run(2, sites={"pio:b": 500}))
    assert row(r, "pio:b")["status"] == "new"
    assert row(r, "pio:a")["status"] == "gone"
    assert not r.regressed


def test_reproducible_and_independent_of_filters():
    base, new = group(range(3), run_sd=0.1), group(range(5, 8), run_sd=0.1)
    r1 = diff(base, new, seed=7)
    r2 = diff(base, new, seed=7, callsite="pio:a")
    cols = ["ci_low", "ci_high", "boot_ci_low", "p_value"]
    assert row(r1, "pio:a")[cols].tolist() == row(r2, "pio:a")[cols].tolist()
    assert list(r2.table["callsite"]) == ["pio:a"]


def test_filters_by_lock_and_callsite_globs():
    frame = locks_frame(1)
    frame["lock"] = np.where(frame["callsite"] == "pio:a", "bql", "blk:queue")
    t = Trace.from_arrow({"locks": to_arrow("locks", frame)})
    r = diff(t, t, lock="blk:*")
    assert set(r.table["lock"]) == {"blk:queue"}
    r = diff(t, t, callsite=["pio:a"])
    assert list(r.table["callsite"]) == ["pio:a"]
    with pytest.raises(DiffError, match="unknown call site 'pio:zz'"):
        diff(t, t, callsite="pio:zz")
    with pytest.raises(DiffError, match="unknown lock"):
        diff(t, t, lock="nope")


# --------------------------------------------------------------------------
# command line: exit statuses and output formats

@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """Directories of 3 baseline runs, 3 same-config runs and 3 runs with
    pio:b lengthened by 1 us, written as real trace directories."""
    root = tmp_path_factory.mktemp("regress")
    paths = {}
    for name, seeds, shift in (("base", (1, 2, 3), None),
                               ("same", (4, 5, 6), None),
                               ("slow", (7, 8, 9), {"pio:b": 1000})):
        for i, s in enumerate(seeds):
            write_trace(root / name / f"r{i}",
                        meta={"config": {"guest": "synthetic"}},
                        locks=locks_frame(s, run_sd=0.05, shift=shift))
        paths[name] = root / name
    return paths


def main(capsys, *argv):
    status = cli.main(["diff", *map(str, argv)])
    out, err = capsys.readouterr()
    return status, out, err


def test_cli_exit_0_on_same_config_groups(capsys, runs_dir):
    status, out, err = main(capsys, runs_dir["base"], "--vs", runs_dir["same"])
    assert status == 0, out
    assert "no regression" in out.splitlines()[-1]
    assert "baseline 3 runs" in out


def test_cli_exit_1_names_the_call_site(capsys, runs_dir):
    status, out, _ = main(capsys, runs_dir["base"], "--vs", runs_dir["slow"])
    assert status == 1
    last = out.splitlines()[-1]
    assert last.startswith("REGRESSION") and "pio:b" in last
    assert re.search(r"bql\s+pio:b\s+regressed", out)
    r0, r1, r2 = (runs_dir["base"] / f"r{i}" for i in range(3))
    n0, n1, n2 = (runs_dir["slow"] / f"r{i}" for i in range(3))
    assert main(capsys, r0, r1, r2, "--vs", n0, n1, n2)[0] == 1
    assert main(capsys, r0, n0)[0] == 1                # BASE NEW shortcut
    assert main(capsys, r0, n0, "--callsite", "pio:a")[0] == 0
    assert main(capsys, r0, n0, "--threshold", "500%")[0] == 0


@pytest.mark.parametrize("argv, message", [
    (["{b}/r0", "/nonexistent/trace"], "trace directory not found"),
    (["{b}/r0", "{b}/r1", "--threshold", "ten"], "bad --threshold"),
    (["{b}/r0", "{b}/r1", "--callsite", "pio:zz"], "unknown call site"),
    (["{b}/r0", "{b}/r1", "--lock", "nope"], "unknown lock"),
    (["{b}/r0", "{b}/r1", "--min-delta", "fast"], "bad duration"),
    (["{b}/r0", "{b}/r1", "{b}/r2"], "--vs"),
])
def test_cli_errors_exit_2_with_one_line(capsys, runs_dir, argv, message):
    argv = [a.format(b=runs_dir["base"]) for a in argv]
    status, out, err = main(capsys, *argv)
    assert status == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("kvmscope diff: error:") and message in err


def test_json_output(capsys, runs_dir, tmp_path):
    status, out, _ = main(capsys, runs_dir["base"], "--vs", runs_dir["slow"],
                          "--format", "json")
    doc = json.loads(out)
    assert status == 1 and doc["regressed"] and doc["exit_status"] == 1
    rows = {(r["lock"], r["callsite"]): r for r in doc["rows"]}
    b = rows[("bql", "pio:b")]
    assert b["status"] == "regressed" and b["base_runs"] == 3
    assert b["new_p50_ns"] > b["base_p50_ns"] + 800
    assert isinstance(b["ci_low"], float) and b["p_adj"] < 0.05
    assert doc["options"]["threshold"] == pytest.approx(0.1)
    # -o with an extension picks the format.
    path = tmp_path / "r.json"
    assert main(capsys, runs_dir["base"], "--vs", runs_dir["slow"],
                "-o", path)[0] == 1
    assert json.loads(path.read_text())["rows"]


def test_markdown_output_is_a_table(capsys, runs_dir):
    status, out, _ = main(capsys, runs_dir["base"], "--vs", runs_dir["slow"],
                          "--format", "markdown")
    lines = out.splitlines()
    assert lines[0].startswith("## kvmscope diff")
    assert any(l.startswith("**REGRESSION**") and "pio:b" in l for l in lines)
    head = lines.index(next(l for l in lines if l.startswith("| lock |")))
    assert re.fullmatch(r"\|(---:?\|)+", lines[head + 1])
    ncols = lines[head].count("|")
    body = list(itertools.takewhile(lambda l: l.startswith("|"),
                                    lines[head + 2:]))
    assert body and all(l.count("|") == ncols for l in body)
    assert any("| pio:b | regressed |" in l for l in body)
    assert "<details>" in out


def test_html_is_one_self_contained_file_with_plots(capsys, runs_dir,
                                                    tmp_path):
    path = tmp_path / "diff.html"
    status, out, _ = main(capsys, runs_dir["base"], "--vs", runs_dir["slow"],
                          "-o", path)
    assert status == 1 and out == ""
    page = path.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith(
        "</html>")
    imgs = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert imgs and all(s.startswith("data:image/png;base64,") for s in imgs)
    import base64
    assert base64.b64decode(imgs[0].split(",", 1)[1])[:8] == \
        b"\x89PNG\r\n\x1a\n"
    # Self-contained: nothing fetched from elsewhere.
    assert not re.search(r'(src|href)="(?!data:)', page)
    assert "<script" not in page and "pio:b" in page


def test_html_without_regression_plots_largest_changes(runs_dir):
    r = diff(runs_dir["base"], runs_dir["same"])
    page = r.to_html()
    assert "Largest changes (none flagged)" in page
    assert "data:image/png;base64," in page
    assert r._repr_html_().startswith("<div>")


def test_api_result_and_notes(runs_dir):
    r = diff(runs_dir["base"] / "r0", runs_dir["slow"] / "r0")
    assert isinstance(r.table, pd.DataFrame)
    assert {"rel_change", "ci_low", "ci_high", "p_adj", "cliffs_delta",
            "hl_shift_ns", "status"} <= set(r.table.columns)
    assert any("one run on a side" in n for n in r.notes)
    assert "REGRESSION" in r.to_text() and "pio:b" in r.to_markdown()
    fig = r.plot("bql", "pio:b")
    assert len(fig.axes) == 2
    assert "regressed" in repr(r)


# --------------------------------------------------------------------------
# single runs judged against the run-to-run variation a store holds

def _store_runs(tmp, factors, seed0=0):
    """Synthetic runs of one configuration whose vcpu:io holds are scaled by
    a per-run factor: the run-to-run variation of a real machine."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from kvmscope.analysis.synth import generate
    paths = []
    for i, f in enumerate(factors):
        tables = generate(1500, 3, 1, seed=seed0 + i)
        locks = tables["locks"]
        mask = pc.equal(pc.cast(locks.column("callsite"), pa.string()), "vcpu:io")
        hold = pc.subtract(locks.column("released_ns"), locks.column("acquired_ns"))
        longer = pc.cast(pc.round(pc.multiply(pc.cast(hold, pa.float64()), f)), pa.int64())
        rel = pc.if_else(mask, pc.add(locks.column("acquired_ns"), longer), locks.column("released_ns"))
        tables["locks"] = locks.set_column(locks.schema.get_field_index("released_ns"), "released_ns", rel)
        meta = {"started_at": f"2026-12-01T00:{seed0 + i:02d}:00+00:00",
                "config": {"guest": "synthetic", "vcpus": 2}}
        paths.append(write_trace(tmp / f"r{seed0 + i:02d}", meta=meta, **tables))
    return paths


def test_store_variation_judges_single_runs(tmp_path):
    pytest.importorskip("duckdb")
    from kvmscope.analysis import Store
    store = Store(tmp_path / "store", create=True)
    store.add(_store_runs(tmp_path, [1.0, 1.2, 0.85, 1.1, 0.9, 1.25, 0.8, 1.05, 0.95, 1.15]))
    base, same, slow = _store_runs(tmp_path / "pair", [1.0, 1.2, 3.0], seed0=40)
    # One run each: a +20% run-to-run difference looks like a regression...
    plain = diff(base, same, callsite="vcpu:io")
    assert plain.regressed
    # ...that the store's runs show to be ordinary.
    judged = diff(base, same, callsite="vcpu:io", store=store.path)
    assert not judged.regressed
    row = judged.table[judged.table.callsite == "vcpu:io"].iloc[0]
    assert row["store_runs"] == 10 and row["ci_low"] < plain.table.iloc[0]["ci_low"]
    assert any("run-to-run variation from the store" in n for n in judged.notes)
    # A real change (3x) is still found.
    assert diff(base, slow, callsite="vcpu:io", store=store.path).regressed
    # From the command line, and a store that is not one: one line, exit 2.
    r = subprocess.run([sys.executable, "-m", "kvmscope.analysis", "diff", base, same,
                        "--callsite", "vcpu:io", "--store", str(store.path)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-m", "kvmscope.analysis", "diff", base, same,
                        "--store", str(tmp_path / "nope")], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr


def _with_cpu_wait(seed, pct):
    """A synthetic run whose meta.json says its two vCPUs waited for a CPU
    *pct* percent of the time they wanted one (stats.cpu)."""
    cpu = {"threads": {f"vcpu{v}": {"cpu_ns": 100 * (100 - pct), "runq_ns": 100 * pct, "slices": 10,
                                     "voluntary": 1, "involuntary": 9} for v in (0, 1)},
           "process_cpu_ns": 30_000, "other_cpu_ns": 0}
    t = run(seed)
    t.meta["stats"] = {"cpu": cpu}
    return t


def test_diff_says_when_the_runs_hosts_were_not_equally_busy():
    # the same code measured on a busy host: its vCPUs waited 30% for a CPU
    # against 2%; the report says so beside whatever it finds
    res = diff([_with_cpu_wait(s, 2) for s in (1, 2)], [_with_cpu_wait(s, 30) for s in (3, 4)])
    note = [n for n in res.notes if "waited for a CPU" in n]
    assert note == ["the candidate's vCPUs waited for a CPU 30% of the time they wanted one, the "
                    "baseline's 2% (meta.json stats.cpu): the hosts were not equally busy, and timing "
                    "differences may be theirs"]
    assert any("waited for a CPU" in line for line in res.render("text").splitlines())
    # equally busy hosts, or runs without the accounting: no such note
    same = diff([_with_cpu_wait(s, 2) for s in (1, 2)], [_with_cpu_wait(s, 9) for s in (3, 4)])
    assert not any("waited for a CPU" in n for n in same.notes)
    bare = diff(group([1, 2]), [_with_cpu_wait(s, 30) for s in (3, 4)])
    assert not any("waited for a CPU" in n for n in bare.notes)
