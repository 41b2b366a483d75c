"""SQL on DuckDB: every table a view with the derived columns and thread
names, over a trace (either layout) or a store (with a run column), as a
table, CSV or JSON; a query DuckDB refuses is one line."""
import io
import json
import os
import subprocess
import sys

import pandas as pd
import pytest

pytest.importorskip("duckdb")

from kvmscope.analysis import Store, Trace  # noqa: E402
from kvmscope.analysis.schema import TABLES  # noqa: E402

from kvm.helpers import kvmscope  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MIXED = os.path.join(ROOT, "traces", "mixed-2vcpu")
REGRESS = os.path.join(ROOT, "traces", "regress")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = Store(tmp_path_factory.mktemp("sql") / "s", create=True)
    s.add([os.path.join(REGRESS, f"base-{i}") for i in (1, 2, 3)], labels={"side": "base"})
    s.add([os.path.join(REGRESS, f"hold2us-{i}") for i in (1, 2, 3)], labels={"side": "hold2us"})
    return s


def test_every_table_is_a_view_with_the_derived_columns():
    t = Trace.load(MIXED)
    for name in TABLES:
        got = t.sql(f"select * from {name}")
        assert len(got) == len(t.frame(name)), name
        assert set(t.frame(name).columns) - {"handoff"} <= set(got.columns), name
    got = t.sql("select thread_name, callsite, sum(hold_ns) h, sum(wait_ns) w from locks "
                "group by all")
    want = t.locks.groupby(["thread_name", "callsite"], observed=True)[["hold_ns", "wait_ns"]].sum()
    for r in got.itertuples():
        assert (r.h, r.w) == tuple(want.loc[(r.thread_name, r.callsite)])


def test_both_layouts_give_the_same_answers(tmp_path):
    q = ("select callsite, count(*) n, quantile_disc(hold_ns, 0.99) p99 from locks "
         "group by 1 order by 1")
    Trace.load(MIXED).to_parquet(tmp_path / "p")
    a = Trace.load(MIXED).sql(q)
    b = Trace.load(tmp_path / "p").sql(q)
    pd.testing.assert_frame_equal(a, b)


def test_over_a_store_a_run_column_joins_everything(store):
    df = store.sql("select r.name, l.callsite, median(l.hold_ns) p50 from locks l "
                   "join runs r using (run) where l.callsite = 'pio:debugport' "
                   "group by all order by 1")
    assert list(df.name) == [f"base-{i}" for i in (1, 2, 3)] + [f"hold2us-{i}" for i in (1, 2, 3)]
    assert (df.p50[:3] < 100).all() and (df.p50[3:] > 2000).all()
    runs = store.sql("select run, labels['side'] side, guest, position from runs order by position")
    assert len(runs) == 6 and set(runs.side) == {"base", "hold2us"}
    per_run = store.sql("select run, count(*) n from exits group by run")
    for r in per_run.itertuples():
        assert r.n == len(store.trace(r.run).exits)


def test_output_as_table_csv_and_json(store):
    q = "select callsite, count(*) n from locks group by 1 order by 1"
    text = kvmscope("sql", store.path, q, check=0).stdout
    assert "pio:debugport" in text and "(3 rows)" in text
    csv = pd.read_csv(io.StringIO(kvmscope("sql", store.path, q, "--format", "csv",
                                           check=0).stdout))
    js = json.loads(kvmscope("sql", store.path, q, "--format", "json", check=0).stdout)
    assert list(csv.callsite) == [r["callsite"] for r in js] == sorted(csv.callsite)
    assert csv.n.sum() == sum(len(store.trace(r).locks) for r in store.run_ids())
    assert len(json.loads(kvmscope("sql", MIXED, "select * from threads", "--format", "json",
                                   "--limit", 2, check=0).stdout)) == 2


@pytest.mark.parametrize("query, what", [
    ("select nope from locks", "nope"),
    ("selec 1", "syntax error"),
    ("select * from missing_table", "missing_table"),
])
def test_a_refused_query_is_one_line(query, what):
    proc = kvmscope("sql", MIXED, query, check=2)
    assert proc.stderr.count("\n") == 1 and what in proc.stderr.lower()


def test_an_unreadable_source_is_one_line(tmp_path):
    proc = kvmscope("sql", tmp_path, "select 1", check=2)
    assert proc.stderr.count("\n") == 1 and "meta.json" in proc.stderr


def test_a_missing_extra_is_named(tmp_path):
    # as if duckdb were not installed: one line naming the extra to install
    code = ("import sys; sys.modules['duckdb'] = None\n"
            "from kvmscope.cli import main\n"
            f"sys.exit(main(['sql', {MIXED!r}, 'select 1']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "pip install 'kvmscope[runs]'" in proc.stderr
