"""The run store: runs added whole (written aside, renamed into place), the
same run never twice, labels and order, and a Parquet dataset that DuckDB,
polars and pyarrow read with a run column."""
import json
import os
import resource
import shutil
import signal
import subprocess
import time

import pytest

from kvmscope.analysis import Store, Trace
from kvmscope.analysis.store import STAGING_PREFIX, StoreError
from kvmscope.analysis.synth import make_trace

from kvm.helpers import kvmscope, kvmscope_cmd

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REGRESS = os.path.join(ROOT, "traces", "regress")


def _run(tmp, name, seed, started, n=3000):
    path = make_trace(tmp / name, n_lock_records=n, seed=seed)
    m = json.load(open(os.path.join(path, "meta.json")))
    m["started_at"] = started
    m["config"] = {"guest": "synthetic", "vcpus": 2, "seed": seed}
    json.dump(m, open(os.path.join(path, "meta.json"), "w"))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    # started out of name order: the store orders by start time
    return [_run(tmp, f"r{i}", i, f"2026-12-0{d}T10:00:00+00:00")
            for i, d in enumerate([3, 1, 2])]


def test_runs_are_listed_in_time_order_with_their_labels(runs, tmp_path):
    s = tmp_path / "s"
    kvmscope("store", "add", s, runs[0], runs[1], "--label", "commit=aaa", "--label", "n=10",
             check=0)
    kvmscope("store", "add", s, runs[2], "--label", "commit=bbb", "--label", "n=9", check=0)
    df = Store(s).runs()
    assert list(df["name"]) == ["r1", "r2", "r0"]
    assert list(df["position"]) == [0, 1, 2]
    assert df["labels"].tolist() == [{"commit": "aaa", "n": "10"}, {"commit": "bbb", "n": "9"},
                                     {"commit": "aaa", "n": "10"}]
    assert (df["time_source"] == "started_at").all()
    # numeric labels sort as numbers
    by_n = Store(s).runs(order="label:n")
    assert list(by_n["name"]) == ["r2", "r1", "r0"]
    out = kvmscope("store", "list", s, "--label", "commit=aaa", "--format", "json", check=0)
    assert [r["name"] for r in json.loads(out.stdout)] == ["r1", "r0"]
    text = kvmscope("store", "list", s, check=0).stdout
    assert "commit=bbb" in text and "(3 rows)" in text
    missing = kvmscope("store", "list", s, "--order", "label:nope", check=2)
    assert missing.stderr.count("\n") == 1 and "no label 'nope'" in missing.stderr


def test_the_same_run_is_refused_wherever_it_was_copied(runs, tmp_path):
    s = tmp_path / "s"
    kvmscope("store", "add", s, runs[0], check=0)
    copy = tmp_path / "copy"
    shutil.copytree(runs[0], copy)
    for args in ([runs[0]], [copy], [runs[1], runs[1]], [runs[1], copy]):
        proc = kvmscope("store", "add", s, *args, check=2)
        assert proc.stderr.count("\n") == 1 and "run" in proc.stderr
    # nothing of a refused add went in
    assert len(Store(s).run_ids()) == 1
    with pytest.raises(StoreError, match="already in the store"):
        Store(s).add(runs[0])


def test_a_stored_run_is_a_trace(runs, tmp_path):
    s = Store(tmp_path / "s", create=True)
    [rid] = s.add(runs[1], labels=["commit=c1"])
    t, u = Trace.load(runs[1]), s.trace(rid[:6])
    assert u.locks[["thread", "acquired_ns", "hold_ns"]].equals(t.locks[["thread", "acquired_ns",
                                                                       "hold_ns"]])
    assert s.resolve("r1") == rid
    kvmscope("validate", s.run_dir(rid), check=0)


def test_other_tools_read_the_store_with_a_run_column(runs, tmp_path):
    duckdb = pytest.importorskip("duckdb")
    pl = pytest.importorskip("polars")
    import pyarrow.dataset as ds
    s = Store(tmp_path / "s", create=True)
    ids = s.add(runs)
    glob = str(tmp_path / "s" / "run=*" / "locks.parquet")
    want = {rid: len(Trace.load(p).locks) for rid, p in zip(ids, runs)}
    got = duckdb.sql(f"select run, count(*) n from read_parquet('{glob}', hive_partitioning=true) "
                     "group by run").df()
    assert dict(zip(got.run, got.n)) == want
    lazy = pl.scan_parquet(glob, hive_partitioning=True).group_by("run").agg(pl.len())
    assert {r: n for r, n in lazy.collect().iter_rows()} == want
    files = [p for _, p in s.table_files("locks")]
    d = ds.dataset(files, format="parquet", partitioning="hive",
                   partition_base_dir=str(tmp_path / "s"))
    assert d.count_rows() == sum(want.values())


def test_not_a_store_and_bad_labels_are_one_line(runs, tmp_path):
    for args, what in ((["store", "list", tmp_path], "not a kvmscope store"),
                       (["store", "add", tmp_path / "s", runs[0], "--label", "nokey"], "bad label"),
                       (["store", "add", tmp_path / "s2", tmp_path / "nothing"], "not found")):
        proc = kvmscope(*args, check=2)
        assert proc.stderr.count("\n") == 1 and what in proc.stderr, proc.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    proc = kvmscope("store", "add", tmp_path / "full", runs[0], check=2)
    assert "not empty" in proc.stderr and os.listdir(tmp_path / "full") == ["notes.txt"]


def _limit_file_size(limit):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def _store_state(s):
    return sorted(os.listdir(s))


def test_a_failed_add_leaves_the_store_as_it_was(runs, tmp_path):
    big = make_trace(tmp_path / "big", n_lock_records=80_000, seed=9)
    s = tmp_path / "s"
    kvmscope("store", "add", s, runs[0], check=0)
    before = _store_state(s)
    proc = subprocess.run(kvmscope_cmd("store", "add", s, big),
                          preexec_fn=_limit_file_size(100_000),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "File too large" in proc.stderr
    assert _store_state(s) == before
    assert len(Store(s).runs()) == 1
    kvmscope("store", "add", s, big, check=0)
    assert len(Store(s).runs()) == 2


def test_a_killed_add_leaves_no_partial_run(runs, tmp_path):
    big = make_trace(tmp_path / "big", n_lock_records=400_000, seed=8)
    s = tmp_path / "s"
    kvmscope("store", "add", s, runs[0], check=0)
    p = subprocess.Popen(kvmscope_cmd("store", "add", s, big), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    staged = False
    while time.monotonic() < deadline and p.poll() is None:
        if any(f.startswith(STAGING_PREFIX) for f in os.listdir(s)):
            staged = True
            break
        time.sleep(0.002)
    p.kill()
    p.wait(timeout=10)
    if not staged:
        pytest.skip("the add finished before it could be killed")
    st = Store(s)
    assert len(st.runs()) == 1                  # the partial run is not part of the store
    assert st.sql("select count(distinct run) n from locks").n[0] == 1
    kvmscope("store", "add", s, big, check=0)   # and the next add clears what was left
    assert not [f for f in os.listdir(s) if f.startswith(STAGING_PREFIX)]
    assert len(Store(s).runs()) == 2


def test_shipped_stream_traces_go_in_as_they_are(tmp_path):
    s = tmp_path / "s"
    names = sorted(os.listdir(REGRESS))
    kvmscope("store", "add", s, *[os.path.join(REGRESS, n) for n in names], check=0)
    df = Store(s).runs()
    assert sorted(df["name"]) == names and (df["time_source"] == "mtime").all()
    # the shipped traces are left untouched
    assert all(os.path.exists(os.path.join(REGRESS, n, "locks.arrows")) for n in names)
