"""Loading and validating trace directories: tables, types, errors, warnings."""

import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from kvmscope.analysis import SCHEMAS, TABLES, Trace, TraceError
from kvmscope.analysis.synth import make_trace, to_arrow, write_trace

from timelines import VCPU_MAIN_LOCKS, VCPU_MAIN_THREADS as THREADS

# The first three acquisitions of the timeline in timelines.py.
LOCKS = VCPU_MAIN_LOCKS.head(3)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    return make_trace(tmp_path_factory.mktemp("gen") / "t", 3000, threads=3,
                      seed=7, batch_rows=500)


def _write_stream(path, table, batch_rows=10):
    with ipc.new_stream(str(path), table.schema) as w:
        w.write_table(table, max_chunksize=batch_rows)


def _lock_table(n):
    return to_arrow("locks", {
        "thread": np.ones(n, dtype=np.int16),
        "request_ns": np.arange(n) * 100, "acquired_ns": np.arange(n) * 100,
        "released_ns": np.arange(n) * 100 + 50})


def test_generated_trace_loads_every_table_with_its_types(generated):
    t = Trace.load(generated)
    assert t.warnings == []
    assert len(t.locks) == 3000 and len(t.exits) > 0 and len(t.aio) > 0
    assert t.locks["lock"].dtype == "category"
    assert t.exits["reason"].dtype == "category"
    assert t.exits["entry_ns"].dtype == "Int64"
    assert t.exits["entry_ns"].isna().sum() == 2       # last exit per vCPU
    assert t.exits["dur_ns"].dtype == "Int64"
    assert t.locks["acquired_ns"].dtype == np.int64
    assert set(t.locks["thread_name"].cat.categories) >= {"main", "vcpu0"}
    for name in TABLES:
        assert t.arrow(name).schema.names[:len(SCHEMAS[name])] == \
            SCHEMAS[name].names
    assert t.meta["state"] == "complete"


def test_derived_columns(tmp_path):
    p = write_trace(tmp_path / "t", threads=THREADS, locks=LOCKS,
                    exits={"thread": [1, 1], "exit_ns": [10, 300],
                           "entry_ns": pd.array([110, None], dtype="Int64")},
                    timers={"thread": [2], "expire_ns": [1000],
                            "fire_ns": [1040], "done_ns": [1100]})
    t = Trace.load(p)
    assert t.locks["wait_ns"].tolist() == [0, 70, 30]
    assert t.locks["hold_ns"].tolist() == [100, 30, 40]
    assert t.locks["handoff"].tolist() == [False, True, True]
    assert t.locks["thread_name"].tolist() == ["vcpu0", "main", "vcpu0"]
    assert t.exits["dur_ns"].tolist()[0] == 100
    assert t.exits["dur_ns"].isna().tolist() == [False, True]
    assert t.timers["late_ns"].tolist() == [40]


def test_absent_tables_load_empty_with_schema(tmp_path):
    t = Trace.load(write_trace(tmp_path / "t", locks=LOCKS))
    assert len(t.aio) == 0 and len(t.exits) == 0
    assert list(t.aio.columns[:len(SCHEMAS["aio"])]) == SCHEMAS["aio"].names
    assert t.exits["entry_ns"].dtype == "Int64"
    assert t.exit_stats().empty and t.aio_stats().empty


def test_missing_directory(tmp_path):
    with pytest.raises(TraceError, match="trace directory not found"):
        Trace.load(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(TraceError, match="not a directory"):
        Trace.load(tmp_path / "file")


def test_missing_and_corrupt_meta(tmp_path):
    p = write_trace(tmp_path / "t", locks=LOCKS)
    os.rename(os.path.join(p, "meta.json"), os.path.join(p, "m"))
    with pytest.raises(TraceError, match=r"meta\.json: missing"):
        Trace.load(p)
    with open(os.path.join(p, "meta.json"), "w") as f:
        f.write('{"format": "kvmscope-trace", "format_')
    with pytest.raises(TraceError, match=r"meta\.json: corrupt JSON") as e:
        Trace.load(p)
    assert "\n" not in str(e.value)
    assert isinstance(e.value, ValueError)
    with open(os.path.join(p, "meta.json"), "w") as f:
        json.dump({"format": "kvmscope-trace", "format_version": 99}, f)
    with pytest.raises(TraceError, match="unsupported format_version 99"):
        Trace.load(p)


def test_truncated_stream_keeps_complete_batches(tmp_path):
    p = write_trace(tmp_path / "t", locks=_lock_table(35), batch_rows=10)
    f = os.path.join(p, "locks.arrows")
    full = os.path.getsize(f)
    # No end-of-stream marker (8 bytes) and half of the last batch gone.
    with open(f, "r+b") as fh:
        fh.truncate(full - 8 - 60)
    t = Trace.load(p)
    assert len(t.locks) == 30
    assert len(t.warnings) == 1
    assert "locks.arrows" in t.warnings[0] and "truncated" in t.warnings[0]
    assert "3 complete batches (30 rows)" in t.warnings[0]


def test_stream_without_end_marker_is_complete(tmp_path):
    p = write_trace(tmp_path / "t", locks=_lock_table(35), batch_rows=10)
    f = os.path.join(p, "locks.arrows")
    with open(f, "r+b") as fh:
        fh.truncate(os.path.getsize(f) - 8)
    t = Trace.load(p)
    assert len(t.locks) == 35 and t.warnings == []


def test_empty_stream_file_is_empty_table(tmp_path):
    p = write_trace(tmp_path / "t", locks=LOCKS)
    open(os.path.join(p, "aio.arrows"), "wb").close()
    t = Trace.load(p)
    assert len(t.aio) == 0
    assert any("aio.arrows: empty file" in w for w in t.warnings)


def test_corrupt_stream(tmp_path):
    p = write_trace(tmp_path / "t", locks=LOCKS)
    with open(os.path.join(p, "exits.arrows"), "wb") as f:
        f.write(b"this is not an arrow stream at all" * 4)
    with pytest.raises(TraceError, match=r"exits\.arrows: corrupt Arrow stream"):
        Trace.load(p)


def test_wrong_column_type_names_file_and_column(tmp_path):
    bad = _lock_table(3).set_column(
        4, "acquired_ns", pa.array(["0", "100", "200"]))
    p = write_trace(tmp_path / "t", locks=bad)
    with pytest.raises(TraceError) as e:
        Trace.load(p)
    msg = str(e.value)
    assert "locks.arrows" in msg and "'acquired_ns'" in msg
    assert "has type string, expected int64" in msg


def test_missing_column_and_nulls(tmp_path):
    p = write_trace(tmp_path / "t", locks=_lock_table(3).drop_columns(["callsite"]))
    with pytest.raises(TraceError, match=r"locks\.arrows: missing column 'callsite'"):
        Trace.load(p)
    t = _lock_table(3)
    t = t.set_column(5, "released_ns", pa.array([1, None, 3], pa.int64()))
    p = write_trace(tmp_path / "u", locks=t)
    with pytest.raises(TraceError, match="'released_ns' has 1 nulls"):
        Trace.load(p)


def test_other_dictionary_index_widths_and_extra_columns_are_accepted(tmp_path):
    t = _lock_table(3)
    t = t.set_column(1, "lock", t.column("lock").cast(
        pa.dictionary(pa.int8(), pa.string())))
    t = t.append_column("cpu", pa.array([0, 1, 0], pa.int32()))
    tr = Trace.load(write_trace(tmp_path / "t", locks=t))
    assert tr.locks["lock"].tolist() == ["bql"] * 3
    assert "cpu" in tr.locks.columns


def test_killed_run_and_lost_records_are_warned(tmp_path):
    p = write_trace(tmp_path / "t", locks=LOCKS, meta={
        "state": "running",
        "records": {"vcpu0": {"written": 10, "lost": 3},
                    "main": {"written": 5, "lost": 0}}})
    w = Trace.load(p).warnings
    assert any("state is 'running'" in x for x in w)
    assert any("3 records lost (vcpu0: 3)" in x for x in w)


def test_from_arrow_in_memory():
    t = Trace.from_arrow({"locks": to_arrow("locks", LOCKS),
                          "threads": to_arrow("threads", THREADS)})
    assert t.locks["hold_ns"].sum() == 170
    with pytest.raises(TraceError, match="'acquired_ns'"):
        Trace.from_arrow({"locks": to_arrow("locks", LOCKS)
                          .drop_columns(["acquired_ns"])})


def test_window_keeps_overlapping_rows(tmp_path):
    t = Trace.load(write_trace(tmp_path / "t", threads=THREADS, locks=LOCKS))
    # Spans (request..release): [0,100] [50,150] [130,200].
    assert t.window(100, 130).locks["request_ns"].tolist() == [0, 50]
    assert t.window(150, None).locks["request_ns"].tolist() == [50, 130]
    assert t.window(None, 50).locks["request_ns"].tolist() == [0]
    assert len(t.window(500, 600).locks) == 0
    assert not t.window(0, 1).complete


def test_window_with_neighbours_keeps_the_rows_next_to_it(tmp_path):
    t = Trace.load(write_trace(tmp_path / "t", threads=THREADS, locks=VCPU_MAIN_LOCKS))
    # Spans [0,100] [50,150] [130,200] [300,310] [320,330]; nothing in
    # [210, 290): per thread, the last row before and the first after.
    assert len(t.window(210, 290).locks) == 0
    w = t.window(210, 290, neighbours=True)
    assert w.locks["request_ns"].tolist() == [50, 130, 300, 320]
    assert not w.complete
    # So the replay knows main was idle across the window (150 .. 320).
    st = w.thread_states(["main"])
    idle = st[st["state"] == "idle"]
    assert idle[["start_ns", "end_ns"]].values.tolist() == [[150, 320]]
    # Rows that overlap [100, 130) are kept as without neighbours, plus
    # each thread's next row: vcpu0's at 130, main's at 320.
    assert t.window(100, 130).locks["request_ns"].tolist() == [0, 50]
    assert t.window(100, 130, neighbours=True).locks["request_ns"].tolist() == \
        [0, 50, 130, 320]


def test_select_by_name_or_id(tmp_path):
    t = Trace.load(write_trace(tmp_path / "t", threads=THREADS, locks=LOCKS))
    assert t.select(threads=["main"]).locks["thread"].tolist() == [2]
    assert t.select(threads=[1]).locks["request_ns"].tolist() == [0, 130]
    assert len(t.select(threads="main").threads) == 2    # kept whole
    with pytest.raises(ValueError, match="unknown thread 'vcpu7'"):
        t.select(threads=["vcpu7"])
