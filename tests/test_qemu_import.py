"""Importing real QEMU trace logs (docs/qemu.md): the logs shipped in traces/
(recorded from QEMU 7.2 by traces/qemu-record.sh) become traces that every
analysis command reads; hand-written logs pin down what each event means;
bad input gets one line and exit status 2.  Needs neither QEMU nor /dev/kvm.
"""
import gzip
import json
import os
import re
import shutil

import pyarrow as pa
import pytest

from kvmscope import cli, qemu, qemu_compare, qemu_run
from kvmscope.analysis import Trace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRACES = os.path.join(ROOT, "traces")
SHIPPED = ["qemu-pio-storm-2vcpu", "qemu-mixed-2vcpu", "qemu-attach-pio-storm"]


def run(capsys, *argv):
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def shipped(name):
    return os.path.join(TRACES, name)


def one_error_line(status, err, *words):
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


# --------------------------------------------------------------------------
# the shipped logs

@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_log_imports_to_the_shipped_trace(name, tmp_path, capsys):
    ref = Trace.load(shipped(name))
    status, out, err = run(capsys, "import", "qemu-log", shipped(name) + ".log.gz",
                           "-o", tmp_path / "t", "--qemu-version", ref.meta["qemu"]["version"],
                           "--guest", ref.meta["config"]["guest"])
    assert status == 0 and err == "", err
    assert "lock acquisitions" in out and "BQL 0x" in out
    new = Trace.load(tmp_path / "t")
    assert new.meta["tables"] == ref.meta["tables"]
    assert new.meta["qemu"]["bql"] == ref.meta["qemu"]["bql"]
    for table in ("threads", "locks", "exits", "aio"):
        a, b = ref.arrow(table), new.arrow(table)
        assert a.num_rows == b.num_rows
        for col in a.column_names:
            x, y = a.column(col), b.column(col)
            if pa.types.is_dictionary(x.type):
                x, y = x.cast(pa.string()), y.cast(pa.string())
            assert x.equals(y), (table, col)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_traces_validate_clean_with_microsecond_clock(name, capsys):
    status, out, err = run(capsys, "validate", shipped(name))
    assert status == 0, out + err
    t = Trace.load(shipped(name))
    assert t.meta["clock"] == {"name": "CLOCK_REALTIME", "source": "qemu-log",
                               "resolution_ns": 1000}
    assert t.meta["qemu"]["version"].startswith("QEMU emulator version 7.2")
    for col in ("request_ns", "acquired_ns", "released_ns"):
        assert (t.locks[col] % 1000 == 0).all()
    assert (t.exits["exit_ns"] % 1000 == 0).all()


def test_bql_threads_and_call_sites_of_qemu_7_2():
    t = Trace.load(shipped("qemu-mixed-2vcpu"))
    q = t.meta["qemu"]
    assert q["bql_rule"] == "released in cpus.c" and q["mutexes"]["bql"] == q["bql"]
    roles = dict(zip(t.threads["name"], t.threads["role"]))
    assert roles["main"] == "main" and roles["vcpu0"] == "vcpu" and roles["vcpu1"] == "vcpu"
    assert roles["rcu"] == "other"
    assert sorted(n for n, r in roles.items() if r == "aio")[:1] == ["aio0"]
    bql = t.locks[t.locks["lock"] == "bql"]
    sites = bql.groupby("callsite", observed=True).size()
    # vCPUs take it to dispatch port I/O, the main loop after each poll
    assert sites["softmmu/physmem.c:2748"] > 8000
    assert sites["util/main-loop.c:318"] > 100
    mains = bql[bql["callsite"] == "util/main-loop.c:318"]["thread_name"].astype(str)
    assert set(mains) == {"main"}
    ios = bql[bql["callsite"] == "softmmu/physmem.c:2748"]["thread_name"].astype(str)
    assert set(ios) == {"vcpu0", "vcpu1"}
    # other mutexes are named after the call site that takes them most
    others = set(t.locks["lock"].astype(str)) - {"bql"}
    assert "mutex@util/thread-pool.c:118" in others
    assert all(re.match(r"^mutex@[\w./-]+:\d+(#\d+)?$", n) for n in others)
    # every exit of a vCPU re-entered the guest (kvm_vcpu_ioctl KVM_RUN), but its last
    assert t.exits["entry_ns"].isna().sum() <= 2


def test_thread_pool_stages_are_reconstructed():
    t = Trace.load(shipped("qemu-mixed-2vcpu"))
    assert t.meta["qemu"]["aio_stages"] == "reconstructed"
    aio = t.aio
    assert len(aio) >= 400                      # 2 vCPUs x 200 DMA requests
    roles = dict(zip(t.threads["thread"], t.threads["role"]))
    assert {roles[x] for x in aio["thread"]} == {"aio"}
    assert {roles[x] for x in aio["submit_thread"]} <= {"vcpu", "main"}
    assert ((aio["submit_ns"] <= aio["start_ns"]) & (aio["start_ns"] <= aio["done_ns"])
            & (aio["done_ns"] <= aio["complete_ns"])).all()
    assert (aio["io_ns"] > 0).mean() > 0.9


def test_every_analysis_command_reads_an_imported_trace(capsys, tmp_path):
    path = shipped("qemu-mixed-2vcpu")
    status, out, err = run(capsys, "--no-pager", "report", path)
    assert status == 0 and err == ""
    assert "timestamps: 1us resolution" in out
    assert "softmmu/physmem.c:2748" in out and "util/main-loop.c:318" in out
    # no duration finer than the log's microseconds
    assert not re.search(r"\d+(\.\d+)?ns\b", out), re.search(r".*\d+(\.\d+)?ns\b.*", out).group(0)
    assert not re.search(r"\b\d+\.\d+us\b", out)
    status, out, _ = run(capsys, "report", path, "--format", "json", "--section", "locks")
    assert status == 0 and json.loads(out)["locks"][0]["lock"] == "bql"
    status, out, _ = run(capsys, "plot", path, "-o", tmp_path / "timeline.png")
    assert status == 0 and os.path.getsize(tmp_path / "timeline.png") > 10_000
    status, out, _ = run(capsys, "plot", path, "--kind", "hold", "-o", tmp_path / "hold.svg")
    assert status == 0 and os.path.getsize(tmp_path / "hold.svg") > 1000
    status, out, _ = run(capsys, "export", path, "--perfetto", tmp_path / "p.json")
    assert status == 0
    with open(tmp_path / "p.json") as f:
        events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    assert len(events) > 10_000


def test_diff_between_kvmscope_and_qemu_on_the_same_workload(capsys):
    status, out, err = run(capsys, "--no-pager", "diff", os.path.join(TRACES, "pio-storm-2vcpu"),
                           "--vs", shipped("qemu-pio-storm-2vcpu"), "--lock", "bql")
    assert status in (0, 1) and "Traceback" not in err
    row = next(line for line in out.splitlines() if line.strip().startswith("bql") and "(all)" in line)
    assert "regressed" in row                   # QEMU's BQL is held far longer per port write
    assert "softmmu/physmem.c:2748" in out and "pio:debugport" in out


def test_side_by_side_figures(capsys):
    k = qemu_compare.bql_figures(os.path.join(TRACES, "pio-storm-2vcpu"))
    q = qemu_compare.bql_figures(shipped("qemu-pio-storm-2vcpu"))
    assert k["source"] == "kvmscope" and q["source"].startswith("QEMU: QEMU emulator version 7.2")
    assert 0.99 <= k["acq_per_exit"] <= 1.01
    assert 0.99 <= q["acq_per_exit"] <= 1.05      # one BQL acquisition per port write, too
    assert q["resolution_ns"] == 1000 and k["resolution_ns"] == 1
    assert q["hold_per_exit_ns"] > 10 * k["hold_per_exit_ns"]
    assert 500 <= q["line_cost_ns"] <= 50_000
    assert qemu_compare.main([os.path.join(TRACES, "pio-storm-2vcpu"),
                              shipped("qemu-pio-storm-2vcpu"), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["source"][:4] for r in rows] == ["kvms", "QEMU"]


# --------------------------------------------------------------------------
# what each event means, on hand-written logs

def write_log(path, lines, end="\n"):
    with open(path, "w") as f:
        f.write("\n".join(lines) + end)
    return str(path)


def line(tid, us, event, args):
    return f"{tid}@1700000000.{us:06d}:{event} {args}"


def lock(tid, us, m, site):
    return line(tid, us, "qemu_mutex_lock", f"waiting on mutex {m} (../../{site})")


def locked(tid, us, m, site):
    return line(tid, us, "qemu_mutex_locked", f"taken mutex {m} (../../{site})")


def unlock(tid, us, m, site):
    return line(tid, us, "qemu_mutex_unlock", f"released mutex {m} (../../{site})")


MAIN, VCPU, WORKER = 100, 200, 300
B, R = "0x5500000000b0", "0x5500000000c0"     # the BQL, a recursive mutex
T0 = 1_700_000_000 * 10 ** 9


def semantics_log(path):
    return write_log(path, [
        unlock(MAIN, 1, B, "softmmu/cpus.c:511"),            # taken before the log
        lock(MAIN, 2, B, "util/main-loop.c:318"),
        locked(MAIN, 3, B, "util/main-loop.c:318"),
        line(VCPU, 4, "kvm_vcpu_ioctl", "cpu_index 0, type 0xae80, arg (nil)"),
        line(VCPU, 9, "kvm_run_exit", "cpu_index 0, reason 2"),
        lock(VCPU, 10, B, "softmmu/physmem.c:2748"),          # main holds it: waits
        unlock(MAIN, 14, B, "softmmu/cpus.c:511"),
        locked(VCPU, 15, B, "softmmu/physmem.c:2748"),
        line(VCPU, 15, "some_future_event", "x 1"),
        unlock(VCPU, 17, B, "softmmu/cpus.c:511"),
        line(VCPU, 18, "kvm_vcpu_ioctl", "cpu_index 0, type 0xae80, arg (nil)"),
        line(VCPU, 30, "kvm_run_exit", "cpu_index 0, reason 39"),     # beyond the format's names
        lock(VCPU, 20, B, "accel/kvm/kvm-all.c:3035"),
        locked(VCPU, 20, B, "accel/kvm/kvm-all.c:3035"),
        # a condition wait: released and taken again at one site, no request
        unlock(VCPU, 31, B, "softmmu/cpus.c:423"),
        locked(VCPU, 40, B, "softmmu/cpus.c:423"),
        unlock(VCPU, 41, B, "softmmu/cpus.c:511"),
        # a recursive mutex taken twice by one thread: one acquisition
        lock(WORKER, 50, R, "util/thread-pool.c:80"),
        locked(WORKER, 50, R, "util/thread-pool.c:80"),
        lock(WORKER, 51, R, "util/thread-pool.c:80"),
        locked(WORKER, 51, R, "util/thread-pool.c:80"),
        unlock(WORKER, 52, R, "util/thread-pool.c:90"),
        unlock(WORKER, 53, R, "util/thread-pool.c:90"),
        "this line is not a trace line",
        line(VCPU, 60, "some_future_event", "x 2"),
    ])


def test_each_event_becomes_what_the_format_says(tmp_path, capsys):
    log = semantics_log(tmp_path / "q.log")
    status, out, err = run(capsys, "import", "qemu-log", log, "-o", tmp_path / "t")
    assert status == 0 and err == ""
    assert "skipped events the import does not read: some_future_event 2" in out
    assert "skipped 1 lines that are not trace lines" in out
    t = Trace.load(tmp_path / "t")
    names = dict(zip(t.threads["thread"], t.threads["name"]))
    assert sorted(zip(t.threads["name"], t.threads["role"], t.threads["tid"])) == [
        ("aio0", "aio", WORKER), ("main", "main", MAIN), ("vcpu0", "vcpu", VCPU)]
    rows = [(names[r.thread], str(r.lock), str(r.callsite), r.request_ns - T0, r.acquired_ns - T0,
             r.released_ns - T0, names.get(r.prev_owner, r.prev_owner), bool(r.contended))
            for r in t.locks.itertuples()]
    us = 1000
    assert rows == [
        # the first release had no acquisition in the log: no previous owner yet
        ("main", "bql", "util/main-loop.c:318", 2 * us, 3 * us, 14 * us, -1, False),
        ("vcpu0", "bql", "softmmu/physmem.c:2748", 10 * us, 15 * us, 17 * us, "main", True),
        ("vcpu0", "bql", "accel/kvm/kvm-all.c:3035", 20 * us, 20 * us, 31 * us, "vcpu0", False),
        ("vcpu0", "bql", "softmmu/cpus.c:423", 40 * us, 40 * us, 41 * us, "vcpu0", False),
        ("aio0", "mutex@util/thread-pool.c:80", "util/thread-pool.c:80", 50 * us, 50 * us,
         53 * us, -1, False)]
    ex = t.exits
    assert list(ex["reason"].astype(str)) == ["io", "unknown"]
    assert list(ex["exit_ns"] - T0) == [9 * us, 30 * us]
    assert ex["entry_ns"].iloc[0] - T0 == 18 * us and ex["entry_ns"].isna().iloc[1]
    imp = t.meta["qemu"]["import"]
    assert imp["unknown_events"] == {"some_future_event": 2}
    assert imp["unknown_exit_reasons"] == {"39": 1}
    assert imp["anomalies"]["release without an acquisition in the log"] == 1
    assert imp["anomalies"]["nested acquisition (recursive mutex)"] == 1
    status, out, _ = run(capsys, "validate", tmp_path / "t")
    assert status == 0, out


def test_bql_found_from_the_main_loop_without_cpus_c(tmp_path):
    # a log in which the BQL is never released in cpus.c (e.g. other QEMU
    # versions' file names): the mutex the main loop takes
    log = write_log(tmp_path / "q.log", [
        lock(MAIN, 1, R, "util/rcu.c:359"), locked(MAIN, 1, R, "util/rcu.c:359"),
        unlock(MAIN, 2, R, "util/rcu.c:361"),
        lock(MAIN, 3, B, "util/main-loop.c:318"), locked(MAIN, 3, B, "util/main-loop.c:318"),
        unlock(MAIN, 4, B, "system/main-loop.c:99")])
    meta = qemu.import_log(log, str(tmp_path / "t"))
    assert meta["qemu"]["bql"] == B and meta["qemu"]["bql_rule"].startswith("taken in the main loop")
    meta = qemu.import_log(log, str(tmp_path / "t"), force=True, bql=R)
    assert meta["qemu"]["bql"] == R and meta["qemu"]["bql_rule"] == "given"


def test_truncated_last_line_is_dropped_and_the_trace_counts_as_cut(tmp_path, capsys):
    lines = [lock(MAIN, 1, B, "util/main-loop.c:318"), locked(MAIN, 2, B, "util/main-loop.c:318"),
             unlock(MAIN, 3, B, "softmmu/cpus.c:511"), lock(MAIN, 4, B, "util/main-loop.c:318")]
    log = write_log(tmp_path / "q.log", lines + ["100@1700000000.000005:qemu_mutex_lo"], end="")
    status, out, err = run(capsys, "import", "qemu-log", log, "-o", tmp_path / "t")
    assert status == 0 and "last line is cut short" in out
    t = Trace.load(tmp_path / "t")
    assert t.meta["state"] == "running" and t.meta["qemu"]["import"]["truncated_last_line"]
    assert len(t.locks) == 1
    status, out, _ = run(capsys, "validate", tmp_path / "t")
    assert status == 3                          # no violation, but the data was cut


def test_a_log_traced_event_by_event_from_the_monitor(tmp_path):
    # trace-event switched qemu_mutex_lock and qemu_mutex_locked on before
    # qemu_mutex_unlock: re-acquisitions then are not nesting, and once
    # releases are traced every acquisition is whole again
    log = write_log(tmp_path / "q.log", [
        lock(MAIN, 1, B, "util/main-loop.c:318"), locked(MAIN, 1, B, "util/main-loop.c:318"),
        lock(MAIN, 3, B, "util/main-loop.c:318"), locked(MAIN, 3, B, "util/main-loop.c:318"),
        unlock(MAIN, 4, B, "softmmu/cpus.c:511"),
        lock(MAIN, 5, B, "util/main-loop.c:318"), locked(MAIN, 6, B, "util/main-loop.c:318"),
        unlock(MAIN, 7, B, "softmmu/cpus.c:511")])
    meta = qemu.import_log(log, str(tmp_path / "t"))
    assert meta["qemu"]["import"]["anomalies"] == {
        "acquired again before releases were traced": 1}
    t = Trace.load(tmp_path / "t")
    assert list(t.locks["acquired_ns"] - T0) == [3000, 6000]
    assert list(t.locks["released_ns"] - T0) == [4000, 7000]


def test_gzip_log_and_large_fields(tmp_path, capsys):
    with open(shipped("qemu-pio-storm-2vcpu") + ".log.gz", "rb") as f:
        text = gzip.decompress(f.read())
    plain = tmp_path / "plain.log"
    plain.write_bytes(text)
    a = qemu.import_log(str(plain), str(tmp_path / "a"))
    b = qemu.import_log(shipped("qemu-pio-storm-2vcpu") + ".log.gz", str(tmp_path / "b"))
    assert a["tables"] == b["tables"]
    cut = tmp_path / "cut.log.gz"
    with open(shipped("qemu-pio-storm-2vcpu") + ".log.gz", "rb") as f:
        cut.write_bytes(f.read()[:100_000])
    status, out, err = run(capsys, "import", "qemu-log", cut, "-o", tmp_path / "c")
    assert status == 0 and "last line is cut short" in out


# --------------------------------------------------------------------------
# bad input: one line, exit status 2

def test_not_a_qemu_log(tmp_path, capsys):
    status, _, err = run(capsys, "import", "qemu-log", os.path.join(ROOT, "README.md"),
                         "-o", tmp_path / "t")
    one_error_line(status, err, "README.md: not a QEMU trace log", "-msg timestamp=on",
                   "-trace qemu_mutex_lock")
    status, _, err = run(capsys, "import", "qemu-log",
                         os.path.join(TRACES, "mixed-2vcpu", "locks.arrows"), "-o", tmp_path / "t")
    one_error_line(status, err, "not a QEMU trace log (binary data)")
    assert not os.path.exists(tmp_path / "t")
    empty = write_log(tmp_path / "empty.log", [], end="")
    status, _, err = run(capsys, "import", "qemu-log", empty, "-o", tmp_path / "t")
    one_error_line(status, err, "not a QEMU trace log (an empty file)")
    for path, why in ((tmp_path / "missing.log", "No such file"), (tmp_path, "not a regular file")):
        status, _, err = run(capsys, "import", "qemu-log", path, "-o", tmp_path / "t")
        one_error_line(status, err, why)
    bad = tmp_path / "bad.log.gz"
    bad.write_bytes(b"\x1f\x8b" + b"\x00" * 64)
    status, _, err = run(capsys, "import", "qemu-log", bad, "-o", tmp_path / "t")
    one_error_line(status, err, "bad.log.gz")


def test_a_log_without_timestamps_says_which_option(tmp_path, capsys):
    log = write_log(tmp_path / "q.log", [
        "qemu_mutex_lock waiting on mutex 0x55 (../../util/main-loop.c:318)",
        "qemu_mutex_locked taken mutex 0x55 (../../util/main-loop.c:318)"])
    status, _, err = run(capsys, "import", "qemu-log", log, "-o", tmp_path / "t")
    one_error_line(status, err, "without timestamps", "-msg timestamp=on")


def test_a_log_without_lock_events_names_the_trace_options(tmp_path, capsys):
    log = write_log(tmp_path / "q.log", [
        line(VCPU, 1, "kvm_run_exit", "cpu_index 0, reason 2"),
        line(VCPU, 2, "kvm_run_exit", "cpu_index 0, reason 2")])
    status, _, err = run(capsys, "import", "qemu-log", log, "-o", tmp_path / "t")
    msg = one_error_line(status, err, "no qemu_mutex_lock or qemu_mutex_locked or "
                                      "qemu_mutex_unlock events", "kvm_run_exit")
    assert msg.endswith("-msg timestamp=on -trace qemu_mutex_lock -trace qemu_mutex_locked "
                        "-trace qemu_mutex_unlock -trace kvm_run_exit -D FILE")
    assert not os.path.exists(tmp_path / "t")


def test_output_directory_rules(tmp_path, capsys):
    log = semantics_log(tmp_path / "q.log")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    status, _, err = run(capsys, "import", "qemu-log", log, "-o", other)
    one_error_line(status, err, "holds no kvmscope trace")
    assert (other / "notes.txt").read_text() == "mine"
    assert run(capsys, "import", "qemu-log", log, "-o", tmp_path / "t", "-q")[0] == 0
    status, _, err = run(capsys, "import", "qemu-log", log, "-o", tmp_path / "t")
    one_error_line(status, err, "already holds a trace", "--force")
    assert run(capsys, "import", "qemu-log", log, "-o", tmp_path / "t", "--force", "-q")[0] == 0
    status, _, err = run(capsys, "import", "qemu-log", log, "-o", tmp_path / "u", "--bql", "0x1234")
    one_error_line(status, err, "no mutex 0x1234 in the log")
    status, _, err = run(capsys, "import", "qemu-log", log, "-o", tmp_path / "u", "--bql", "main")
    one_error_line(status, err, "--bql")


def test_qemu_command_refuses_bad_input_before_running_qemu(tmp_path, capsys):
    status, _, err = run(capsys, "qemu", "--guest", "pio-storm")
    one_error_line(status, err, "-o TRACE is required")
    status, _, err = run(capsys, "qemu", "-o", tmp_path / "t")
    one_error_line(status, err, "no QEMU command")
    status, _, err = run(capsys, "qemu", "-o", tmp_path / "t", "--guest", "nosuch")
    one_error_line(status, err, "unknown QEMU guest 'nosuch'", "pio-storm, mixed")
    status, _, err = run(capsys, "qemu", "-o", tmp_path / "t", "--guest", "mixed", "--vcpus", "3")
    one_error_line(status, err, "--vcpus 3", "at most 2")
    status, _, err = run(capsys, "qemu", "-o", tmp_path / "t", "--events", "kvm_run_exit",
                         "--guest", "pio-storm")
    one_error_line(status, err, "qemu_mutex_lock")
    status, _, err = run(capsys, "qemu", "-o", tmp_path / "t", "--", "qemu-system-x86_64",
                         "-D", "x.log")
    one_error_line(status, err, "sets -D")
    status, _, err = run(capsys, "qemu", "-o", tmp_path / "t", "--", str(tmp_path / "no-qemu"))
    one_error_line(status, err, "no-qemu: not found")
    status, _, err = run(capsys, "qemu", "-o", tmp_path / "t", "--vcpus", "2", "--",
                         "qemu-system-x86_64")
    one_error_line(status, err, "--vcpus sets up a guest for QEMU", "--guest NAME")
    assert not os.path.exists(tmp_path / "t")


def test_guests_for_qemu_are_multiboot_kernels(capsys):
    status, out, _ = run(capsys, "qemu", "--list-guests", "--format", "json")
    assert status == 0
    listed = {g["name"]: g for g in json.loads(out)}
    assert set(listed) == {"pio-storm", "mixed"}
    for g in listed.values():
        with open(g["kernel"], "rb") as f:
            image = f.read()
        assert image[:5] == b"\x7fELF\x01"          # 32-bit ELF, as QEMU's loader wants
        header = image[:8192]
        i = header.find((0x1BADB002).to_bytes(4, "little"))
        assert i >= 0 and i % 4 == 0                # the multiboot header
        flags = int.from_bytes(header[i + 4:i + 8], "little")
        checksum = int.from_bytes(header[i + 8:i + 12], "little")
        assert (0x1BADB002 + flags + checksum) % 2 ** 32 == 0
        assert "-kernel" in g["command"] and "isa-debug-exit" in g["command"]
    assert "host,-arch-capabilities" in listed["mixed"]["command"]
    assert any("if=ide" in a for a in listed["mixed"]["command"])
    assert qemu_run.parse_events("minimal,thread_pool_submit") == \
        list(qemu.MINIMAL_EVENTS) + ["thread_pool_submit"]


def test_shipped_logs_are_small():
    for name in SHIPPED:
        assert os.path.getsize(shipped(name) + ".log.gz") < 1 << 20
        size = sum(os.path.getsize(os.path.join(shipped(name), f)) for f in os.listdir(shipped(name)))
        assert size < 1 << 20
