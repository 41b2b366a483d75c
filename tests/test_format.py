"""The trace format is defined once (kvmscope.traceformat): the compiled core's
codes and record writers must agree with it, or every trace would be misread."""
import pyarrow.ipc as ipc
import pytest

from kvmscope import traceformat as fmt
from kvmscope.tracewriter import TraceWriter

core = pytest.importorskip("kvmscope._core", reason="the compiled core is not built")


def test_core_codes_match_the_format():
    c = core.constants()
    assert c["record_types"] == fmt.RECORD_TYPES
    assert {name: fmt.AIO_OPS.index(name) for name in c["aio_ops"]} == c["aio_ops"]
    assert set(c["irq_kinds"]) == set(fmt.IRQ_KINDS)
    assert {name: fmt.IRQ_KINDS.index(name) for name in c["irq_kinds"]} == c["irq_kinds"]
    assert {name: fmt.EXIT_REASONS.index(name) for name in c["exit_reasons"]} == c["exit_reasons"]
    assert c["device_unassigned"] == fmt.DEVICE_UNASSIGNED
    assert c["device_not_io"] == fmt.DEVICE_NOT_IO
    assert c["record_size"] == core.RECORD_DTYPE.itemsize == 64


def test_every_record_writer_lands_in_the_documented_columns(tmp_path):
    records, expected = core.record_writers_selftest()
    assert sorted(expected) == sorted(fmt.RECORD_LAYOUT)
    names = {"devices": ["dev0", "dev1"], "callsites": ["site0", "site1", "site2"],
             "bh_names": ["bh0", "bh1"], "timer_names": ["timer0"]}
    w = TraceWriter(str(tmp_path), names["devices"], names["callsites"], bh_names=names["bh_names"],
                    timer_names=names["timer_names"])
    w.write_records(records)
    w.close()
    lists = {"devices": names["devices"], "callsites": names["callsites"], "locks": ["bql"],
             "bottom_halves": names["bh_names"], "timers": names["timer_names"]}
    for table, want in expected.items():
        got = ipc.open_stream(str(tmp_path / fmt.table_file(table))).read_all()
        assert got.num_rows == 1, table
        assert got.schema.equals(fmt.SCHEMAS[table]), table
        row = got.to_pylist()[0]
        for column, value in want.items():
            slot, dictionary = fmt.RECORD_LAYOUT[table][1][column]
            if dictionary in lists and isinstance(value, int):
                value = lists[dictionary][value]
            assert row[column] == value, f"{table}.{column} (slot {slot}): {row[column]!r} != {value!r}"


def test_unassigned_and_non_io_devices_are_named(tmp_path):
    records, _ = core.record_writers_selftest()
    exits = records[records["type"] == fmt.RECORD_TYPES["exit"]].copy()
    exits = exits.repeat(2)
    exits["w1"] = [fmt.DEVICE_UNASSIGNED, fmt.DEVICE_NOT_IO]
    w = TraceWriter(str(tmp_path), ["dev0"], ["site0"])
    w.write_records(exits)
    w.close()
    got = ipc.open_stream(str(tmp_path / fmt.table_file("exits"))).read_all()
    assert got.column("device").to_pylist() == ["unassigned", ""]
