"""The Parquet and Arrow IPC file layouts of a finished trace: written whole
(temporary name, fsync, rename), read by kvmscope as the streams are, and
opened directly by DuckDB, polars and pandas."""
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from kvmscope.analysis import Trace, TraceError
from kvmscope.analysis import convert
from kvmscope.analysis.schema import TABLES
from kvmscope.analysis.synth import make_killed_trace, make_trace

from kvm.helpers import kvmscope, kvmscope_cmd

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MIXED = os.path.join(ROOT, "traces", "mixed-2vcpu")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return make_trace(tmp_path_factory.mktemp("conv") / "t", n_lock_records=5000, seed=3)


def _same_tables(a, b):
    for name in TABLES:
        x, y = a.frame(name), b.frame(name)
        assert list(x.columns) == list(y.columns), name
        pd.testing.assert_frame_equal(x.reset_index(drop=True), y.reset_index(drop=True),
                                      check_categorical=False, obj=name)


@pytest.mark.parametrize("layout", ["parquet", "arrow"])
def test_a_converted_trace_loads_the_same(synthetic, tmp_path, layout):
    t = Trace.load(synthetic)
    out = tmp_path / "out"
    getattr(t, "to_parquet" if layout == "parquet" else "to_arrow")(out)
    suffix = convert.LAYOUTS[layout]
    assert sorted(os.listdir(out)) == sorted([n + suffix for n in TABLES] + ["meta.json"])
    assert json.load(open(out / "meta.json"))["layout"] == layout
    u = Trace.load(out)
    _same_tables(t, u)
    assert u.lock_stats(["lock", "callsite"]).equals(t.lock_stats(["lock", "callsite"]))
    assert kvmscope("validate", out).returncode == 0


def test_duckdb_polars_and_pandas_open_the_parquet_layout(synthetic, tmp_path):
    duckdb = pytest.importorskip("duckdb")
    pl = pytest.importorskip("polars")
    t = Trace.load(synthetic)
    t.to_parquet(tmp_path / "p")
    locks = str(tmp_path / "p" / "locks.parquet")
    want = t.locks.groupby("thread_name", observed=True)["hold_ns"].sum()
    # DuckDB, no kvmscope involved: thread names and hold times are columns
    got = duckdb.sql(f"select thread_name, sum(released_ns - acquired_ns) as s from '{locks}' "
                     "group by 1").df()
    assert dict(zip(got.thread_name, got.s)) == {k: v for k, v in want.items()}
    lazy = pl.scan_parquet(locks).filter(pl.col("contended")) \
        .select((pl.col("acquired_ns") - pl.col("request_ns")).sum())
    assert lazy.collect().item() == t.locks.wait_ns[t.locks.contended].sum()
    df = pd.read_parquet(locks)
    assert len(df) == len(t.locks) and df.thread_name.dtype == "category"
    assert (df.thread_name.astype(str) == t.locks.thread_name.astype(str)).all()
    exits = pd.read_parquet(tmp_path / "p" / "exits.parquet")
    assert exits.entry_ns.isna().sum() == t.exits.dur_ns.isna().sum()


def test_polars_scans_the_arrow_file_layout(synthetic, tmp_path):
    pl = pytest.importorskip("polars")
    t = Trace.load(synthetic)
    t.to_arrow(tmp_path / "a")
    f = str(tmp_path / "a" / "locks.arrow")
    assert pl.scan_ipc(f).select(pl.len()).collect().item() == len(t.locks)
    with pa.memory_map(f) as src:
        reader = ipc.open_file(src)             # random access: a footer
        assert reader.num_record_batches >= 1
        assert "thread_name" in reader.schema.names


def test_convert_in_place_keeps_every_figure(tmp_path):
    d = tmp_path / "mixed"
    shutil.copytree(MIXED, d)
    before = kvmscope("report", d, "--format", "json", check=0).stdout
    proc = kvmscope("convert", d, check=0)
    assert "parquet layout" in proc.stdout and "bytes per record" in proc.stdout
    files = os.listdir(d)
    assert not [f for f in files if f.endswith(".arrows") or f.endswith(".tmp")]
    assert json.load(open(d / "meta.json"))["layout"] == "parquet"
    assert kvmscope("report", d, "--format", "json", check=0).stdout == before
    kvmscope("validate", d, check=0)
    # once is enough
    again = kvmscope("convert", d, check=2)
    assert "already in the parquet layout" in again.stderr


def test_convert_refuses_a_directory_that_is_not_empty(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    proc = kvmscope("convert", MIXED, "--to", "parquet", tmp_path / "out", check=2)
    assert proc.stderr.count("\n") == 1 and "not empty" in proc.stderr
    assert os.listdir(tmp_path / "out") == ["notes.txt"]


def _limit_file_size(limit):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_conversion_that_fails_leaves_the_streams(tmp_path):
    # A real OS limit makes the Parquet write fail half way.
    d = tmp_path / "t"
    make_trace(d, n_lock_records=60_000, seed=1)
    before = kvmscope("report", d, "--format", "json", check=0).stdout
    proc = subprocess.run(kvmscope_cmd("convert", d), preexec_fn=_limit_file_size(60_000),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "File too large" in proc.stderr
    assert "layout" not in json.load(open(d / "meta.json"))
    assert all(os.path.exists(d / f"{n}.arrows") for n in TABLES)
    assert not [f for f in os.listdir(d) if f.endswith(".tmp")]
    assert kvmscope("report", d, "--format", "json", check=0).stdout == before


def _killed(path):
    make_killed_trace(path, n_lock_records=4000, seed=2)
    # what a killed recorder leaves: its lock file, the lock gone with it
    open(os.path.join(path, convert.LOCK_FILE), "w").close()
    return path


def test_a_killed_run_is_converted_on_first_load(tmp_path):
    d = _killed(tmp_path / "k")
    first = Trace.load(d)
    assert json.load(open(d / "meta.json"))["layout"] == "parquet"
    assert not os.path.exists(d / convert.LOCK_FILE)
    assert not [f for f in os.listdir(d) if f.endswith(".arrows")]
    second = Trace.load(d)
    _same_tables(first, second)
    # what the streams said about their ends is kept, so the gaps are the same
    assert second.cut == first.cut and second.warnings == first.warnings
    assert any("killed" in w for w in second.warnings)
    assert second.coverage().equals(first.coverage())
    assert kvmscope("validate", d).returncode == 3


def test_the_same_killed_run_reads_the_same_before_and_after(tmp_path):
    a = _killed(tmp_path / "a")
    b = tmp_path / "b"
    shutil.copytree(a, b)
    os.remove(b / convert.LOCK_FILE)            # not a recording: never converted
    out_b = kvmscope("validate", b, "--format", "json").stdout
    assert json.load(open(b / "meta.json")).get("layout") is None
    out_a = kvmscope("validate", a, "--format", "json").stdout
    assert json.load(open(a / "meta.json"))["layout"] == "parquet"
    assert json.loads(out_a) | {"trace": ""} == json.loads(out_b) | {"trace": ""}


def test_a_recording_still_running_is_not_converted(tmp_path):
    d = _killed(tmp_path / "live")
    fd = convert.take_lock(str(d))              # the recorder holds it
    try:
        Trace.load(d)
        assert json.load(open(d / "meta.json")).get("layout") is None
        assert os.path.exists(d / "locks.arrows")
    finally:
        convert.release_lock(str(d), fd)


def test_damaged_parquet_files_give_one_line(synthetic, tmp_path):
    t = Trace.load(synthetic)
    base = tmp_path / "p"
    t.to_parquet(base)
    rng = random.Random(20261202)
    outcomes = set()
    for i in range(40):
        d = tmp_path / f"m{i}"
        shutil.copytree(base, d)
        name = rng.choice(TABLES)
        f = d / f"{name}.parquet"
        data = bytearray(f.read_bytes())
        how = rng.choice(["flip", "cut", "zero"])
        if how == "flip":
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif how == "cut":
            data = data[:rng.randrange(len(data))]
        else:
            at = rng.randrange(len(data))
            data[at:at + 64] = bytes(min(64, len(data) - at))
        f.write_bytes(bytes(data))
        try:
            Trace.load(d).lock_stats()
            outcomes.add("read")
        except TraceError as e:
            assert "\n" not in str(e) and name in str(e)
            outcomes.add("refused")
    assert "refused" in outcomes


def test_a_truncated_parquet_table_is_refused_by_every_command(synthetic, tmp_path):
    d = tmp_path / "p"
    Trace.load(synthetic).to_parquet(d)
    f = d / "locks.parquet"
    f.write_bytes(f.read_bytes()[:100])
    for args in (["validate", d], ["report", d], ["sql", d, "select 1"]):
        proc = kvmscope(*args, check=2)
        assert proc.stderr.count("\n") == 1 and "locks.parquet: corrupt Parquet file" in proc.stderr


def test_the_layout_in_meta_json_is_checked(synthetic, tmp_path):
    d = tmp_path / "p"
    Trace.load(synthetic).to_parquet(d)
    m = json.load(open(d / "meta.json"))
    for bad, what in (("csv", "'layout'"), (7, "'layout'")):
        json.dump(dict(m, layout=bad), open(d / "meta.json", "w"))
        with pytest.raises(TraceError, match=what):
            Trace.load(d)
    json.dump(dict(m, converted={"cut": {"nope": "x"}}), open(d / "meta.json", "w"))
    with pytest.raises(TraceError, match="converted.cut"):
        Trace.load(d)


# --------------------------------------------------------------------------
# recordings

@pytest.mark.kvm
def test_a_recording_ends_in_the_parquet_layout(tmp_path):
    out = tmp_path / "r"
    kvmscope("run", "mixed", "--vcpus", 2, "-n", 100, "-q", "-o", out, check=0)
    files = sorted(os.listdir(out))
    assert files == sorted([f"{n}.parquet" for n in TABLES] + ["meta.json", "console.log"])
    m = json.load(open(out / "meta.json"))
    assert m["layout"] == "parquet" and m["state"] == "complete" and m["started_at"]
    t = Trace.load(out)
    assert len(t.locks) == m["tables"]["locks"] > 100
    kvmscope("validate", out, check=0)


@pytest.mark.kvm
def test_a_killed_recording_becomes_parquet_on_first_load(tmp_path):
    from kvm.helpers import start, wait_for_rows
    out = tmp_path / "t"
    p = start("run", "pio-storm", "-n", 4_000_000_000, "-o", out, "-q")
    wait_for_rows(out, min_bytes=200_000)
    wait_for_rows(out, table="locks", min_bytes=100_000)
    assert os.path.exists(out / convert.LOCK_FILE)
    p.kill()
    p.wait(timeout=10)
    t = Trace.load(out)
    m = json.load(open(out / "meta.json"))
    assert m["state"] == "running" and m["layout"] == "parquet"
    assert len(t.exits) > 1000 and not os.path.exists(out / convert.LOCK_FILE)
    assert Trace.load(out).warnings == t.warnings
    assert np.array_equal(Trace.load(out).exits.exit_ns, t.exits.exit_ns)
