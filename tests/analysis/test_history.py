"""History over a store: each call site's statistic per run, change points
found by ruptures and kept by effect size, the CI gate on the newest runs,
and single runs judged against the run-to-run variation in the store."""
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

pytest.importorskip("ruptures")

from kvmscope.analysis import Store, Trace  # noqa: E402
from kvmscope.analysis import history as h  # noqa: E402
from kvmscope.analysis.synth import generate, write_trace  # noqa: E402

from kvm.helpers import kvmscope  # noqa: E402

SITE = "vcpu:io"


def _scaled(tables, site, factor):
    """The locks of *site* held *factor* times as long."""
    locks = tables["locks"]
    mask = pc.equal(pc.cast(locks.column("callsite"), pa.string()), site)
    hold = pc.subtract(locks.column("released_ns"), locks.column("acquired_ns"))
    longer = pc.cast(pc.round(pc.multiply(pc.cast(hold, pa.float64()), factor)), pa.int64())
    released = pc.if_else(mask, pc.add(locks.column("acquired_ns"), longer),
                          locks.column("released_ns"))
    i = locks.schema.get_field_index("released_ns")
    return dict(tables, locks=locks.set_column(i, "released_ns", released))


def _runs(tmp, n, steps, config=None, start=0):
    """n synthetic runs; *steps* maps a run index to the factor from it on."""
    paths = []
    for i in range(start, start + n):
        tables = generate(1500, 3, 1, seed=i)
        factor = 1.0
        for at, f in sorted(steps.items()):
            if i >= at:
                factor = f
        if factor != 1.0:
            tables = _scaled(tables, SITE, factor)
        meta = {"started_at": f"2026-12-01T{i // 60:02d}:{i % 60:02d}:00+00:00",
                "config": config or {"guest": "synthetic", "vcpus": 2}}
        paths.append(write_trace(tmp / f"r{i:03d}", meta=meta, **tables))
    return paths


@pytest.fixture(scope="module")
def step_store(tmp_path_factory):
    """24 runs, +40% hold at vcpu:io from run 10 on."""
    tmp = tmp_path_factory.mktemp("hist")
    s = Store(tmp / "s", create=True)
    s.add(_runs(tmp, 24, {10: 1.4}), labels={"branch": "main"})
    return s


def test_per_run_statistics_are_those_of_the_trace(step_store):
    st = h.store_stats(step_store)
    rid = step_store.run_ids()[0]
    t = step_store.trace(rid)
    holds = np.sort(t.locks.hold_ns[t.locks.callsite == SITE].to_numpy())
    row = st[(st.run == rid) & (st.callsite == SITE)].iloc[0]
    n = len(holds)
    assert row["count"] == n and row["total"] == holds.sum()
    assert row["p50"] == holds[(50 * n + 99) // 100 - 1]
    assert row["p99"] == holds[(99 * n + 99) // 100 - 1]
    assert abs(row["mean"] - holds.mean()) < 1e-6
    for lock, g in t.locks.groupby("lock", observed=True):
        lock_row = st[(st.run == rid) & (st.lock == lock) & (st.callsite == "*")].iloc[0]
        assert lock_row["count"] == len(g)


def test_a_step_is_found_where_it_is_and_an_old_one_does_not_fail_the_gate(step_store, tmp_path):
    r = h.history(step_store, callsite=SITE)
    cps = r.change_points
    assert len(cps) == 1
    cp = cps.iloc[0]
    assert abs(cp.position - 10) <= 1 and 0.25 < cp.change < 0.6 and cp["name"] == f"r{cp.position:03d}"
    assert r.exit_status == 0 and "no regression" in r.verdict()
    proc = kvmscope("history", step_store.path, "--callsite", SITE, "--plot", tmp_path / "h.png",
                    check=0)
    assert "vcpu:io" in proc.stdout and "no regression in the newest 5 runs" in proc.stdout
    assert (tmp_path / "h.png").stat().st_size > 10_000


def test_the_gate_fails_when_the_newest_runs_start_a_regression(tmp_path):
    s = Store(tmp_path / "s", create=True)
    s.add(_runs(tmp_path, 20, {16: 1.4}))
    proc = kvmscope("history", s.path, "--format", "json", check=1)
    doc = json.loads(proc.stdout)
    assert doc["exit_status"] == 1 and "bql vcpu:io hold p50" in doc["verdict"]
    [cp] = [c for c in doc["change_points"] if c["callsite"] == SITE]
    assert cp["position"] == 16 and cp["recent"]
    csv = kvmscope("history", s.path, "--format", "csv", "--callsite", SITE, check=1).stdout
    assert csv.splitlines()[0].startswith("lock,callsite,position,run,name,before,after,change")
    # an improvement is a change point, not a regression
    s2 = Store(tmp_path / "s2", create=True)
    s2.add(_runs(tmp_path / "b", 20, {16: 0.6}))
    r = h.history(s2, callsite=SITE)
    assert len(r.change_points) == 1 and r.change_points.change[0] < -0.25 and r.exit_status == 0


def test_the_newest_run_alone_is_judged_against_the_runs_before_it(tmp_path):
    s = Store(tmp_path / "s", create=True)
    s.add(_runs(tmp_path, 15, {14: 3.0}))
    r = h.history(s, callsite=SITE)
    assert r.exit_status == 1
    [row] = r.newest_regressed.itertuples()
    assert row.callsite == SITE and row.change > 1.5 and row.low > 0.05


def test_label_order_and_filters(step_store):
    runs = step_store.runs(order="time")
    r = h.history(step_store, callsite=SITE, labels={"branch": "main"})
    assert len(r.runs) == len(runs)
    none = h.history(step_store, labels={"branch": "other"})
    assert len(none.runs) == 0 and none.exit_status == 0
    proc = kvmscope("history", step_store.path, "--callsite", "nope*", check=2)
    assert proc.stderr.count("\n") == 1 and "unknown call site 'nope*'" in proc.stderr


def test_change_points_on_noise_and_steps():
    rng = np.random.default_rng(1)
    false = 0
    for _ in range(20):                     # 2000 runs of pure noise
        false += len(h.change_points(1000 * np.exp(rng.normal(0, 0.05, 100))))
    assert false <= 2
    found = 0
    for _ in range(20):                     # +10% at run 50, noise 3%
        v = 10_000 * np.exp(rng.normal(0, 0.03, 100)) * np.r_[np.ones(50), 1.1 * np.ones(50)]
        cps = h.change_points(v)
        found += any(abs(c["index"] - 50) <= 5 and c["change"] > 0 for c in cps)
    assert found >= 18
    # effect size: a tiny but clear step is not reported
    v = 1000 * np.r_[np.ones(50), 1.02 * np.ones(50)] * np.exp(rng.normal(0, 0.001, 100))
    assert h.change_points(v) == []
    assert h.change_points(v, threshold=0.01, min_delta_ns=0)


def test_a_single_run_against_the_store_variation(tmp_path):
    s = Store(tmp_path / "s", create=True)
    config = {"guest": "synthetic", "vcpus": 2, "seed": 1}
    s.add(_runs(tmp_path, 10, {}, config))
    var = h.variation(s, config)
    row = var[var.callsite == SITE].iloc[0]
    assert row.runs == 10 and 0 < row.sd_log < 0.2
    base, same, slow = _runs(tmp_path / "p", 3, {102: 1.5}, config, start=100)
    j = h.judge_pair(Trace.load(base), Trace.load(same), s)
    assert (j.status != "regressed").all()
    j = h.judge_pair(Trace.load(base), Trace.load(slow), s)
    assert j.set_index("callsite").loc[SITE, "status"] == "regressed"
    # runs of another configuration are not a baseline
    other = h.judge_pair(Trace.load(base), Trace.load(slow), s.__class__(s.path),
                         min_runs=11)
    assert (other.status == "no baseline").all()
