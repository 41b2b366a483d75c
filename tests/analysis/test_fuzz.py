"""Corrupt-trace fuzzing: seeded mutations of the sample traces through
``report``, ``validate``, ``export``, ``plot`` and ``diff``.

Each command must end with a result (exit 0 or 1; 3 from ``validate`` for
incomplete data) or with exactly one line on stderr and exit status 2: never
a traceback, a crash, a hang or unbounded memory.  The mutations run inside
two long-lived worker processes (one Python start-up each, not one per
mutation), each under an address-space limit, watched by this test: a worker
that stops answering is killed and the mutation it was on is reported.

KVMSCOPE_FUZZ_SEED (default 20261201) and KVMSCOPE_FUZZ_N (default 400)
choose the mutations; the seed is printed with every failure, and
``python tests/analysis/test_fuzz.py SEED INDEX`` replays one mutation.
"""

import io
import json
import os
import random
import resource
import select
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

SEED = int(os.environ.get("KVMSCOPE_FUZZ_SEED", "20261201"))
COUNT = int(os.environ.get("KVMSCOPE_FUZZ_N", "400"))
WORKERS = 2
#: A mutation taking longer than this is a hang.
MUTATION_TIMEOUT_S = 60
#: Address-space limit of a worker (pandas, pyarrow and matplotlib loaded).
MEMORY_LIMIT = 3 << 30

HERE = os.path.dirname(os.path.abspath(__file__))
TRACES = os.path.normpath(os.path.join(HERE, "..", "..", "traces"))
SOURCES = ["timer-hlt-2vcpu", "disk-io-user-irqchip", "mixed-2vcpu",
           os.path.join("regress", "base-1"), "synthetic-lossy", "synthetic-killed"]
TABLE_FILES = ["threads", "exits", "locks", "bh", "timers", "aio", "loop",
               "irqs", "losses"]
COMMANDS = ["report", "export", "plot", "diff"]
PLOT_KINDS = ["timeline", "wait", "hold", "contention", "exits", "aio", "bh",
              "timers"]

# Odd JSON values for meta.json keys; the two huge integers are written as
# raw text (json.dumps would write them too, but this keeps them exact).
ODD_VALUES = [None, True, False, 0, -1, 1.5, float("nan"), 2 ** 64,
              "10" + "0" * 400, "", "running", "x" * 300, [], [1, 2], {},
              {"a": 1}, [[[]]], {"guest": ["x"]}]
META_KEYS = ["format", "format_version", "state", "start_ns", "end_ns",
             "config", "records", "tables", "failure", "stop_reason", "clock",
             "config.guest", "records.vcpu0", "records.vcpu0.lost",
             "records.main.lost", "tables.locks", "tables.exits", "tables.losses"]


# --------------------------------------------------------------------------
# mutations (run in the worker)

def _files(d):
    return sorted(f for f in os.listdir(d))


def _arrow_files(d):
    """The table files that are plain non-empty files (earlier steps may
    have left links, directories or empty files)."""
    out = []
    for f in _files(d):
        p = os.path.join(d, f)
        if f.endswith(".arrows") and not os.path.islink(p) and os.path.isfile(p) \
                and os.path.getsize(p):
            out.append(f)
    return out


def _read(path):
    import pyarrow as pa
    import pyarrow.ipc as ipc
    with open(path, "rb") as f:         # a copy: the file is rewritten next
        return ipc.open_stream(pa.py_buffer(f.read())).read_all()


def _write(path, table):
    import pyarrow.ipc as ipc
    with ipc.new_stream(path, table.schema) as w:
        w.write_table(table, max_chunksize=max(1, table.num_rows // 3 or 1))


def _bad_utf8(arr):
    import pyarrow as pa
    arr = arr.cast(pa.string())
    bufs = arr.buffers()
    data = bytearray(bufs[2].to_pybytes()) if bufs[2] is not None else bytearray()
    if not data:
        return None
    data[0] = 0xFF
    return pa.Array.from_buffers(pa.string(), len(arr), [bufs[0], bufs[1],
                                                         pa.py_buffer(bytes(data))])


def _mutate_column(rng, d):
    """Rewrite one column of one table with pyarrow."""
    import numpy as np
    import pyarrow as pa
    files = _arrow_files(d)
    if not files:
        return "no table to rewrite"
    f = rng.choice(files)
    path = os.path.join(d, f)
    try:
        t = _read(path)
    except Exception:                   # corrupted by an earlier step
        return f"{f}: unreadable, not rewritten"
    if not t.num_columns:
        return f"{f}: no columns"
    i = rng.randrange(t.num_columns)
    name = t.schema.field(i).name
    col = t.column(i).combine_chunks()
    n = t.num_rows
    how = rng.choice(["string", "float", "int32", "drop", "rename", "duplicate",
                      "nulls", "shuffle", "extreme", "negative", "threads",
                      "dict_oob", "utf8", "empty", "extra", "dict_ints",
                      "all_null", "reverse"])
    if how == "string":
        t = t.set_column(i, name, col.cast(pa.string()) if not
                         pa.types.is_dictionary(col.type) else col.dictionary_decode())
        if pa.types.is_dictionary(col.type):
            t = t.set_column(i, name, pa.array(np.arange(n)))
    elif how == "float":
        try:
            t = t.set_column(i, name, col.cast(pa.float64()))
        except pa.ArrowException:
            t = t.set_column(i, name, pa.array(np.linspace(0, 1, n)))
    elif how == "int32":
        t = t.set_column(i, name, pa.array(np.arange(n, dtype=np.int32)))
    elif how == "drop":
        t = t.remove_column(i)
    elif how == "rename":
        t = t.rename_columns([c if j != i else c + "_x"
                              for j, c in enumerate(t.column_names)])
    elif how == "duplicate":
        t = t.append_column(name, col)
    elif how in ("nulls", "all_null"):
        mask = np.ones(n, bool) if how == "all_null" else \
            np.asarray([rng.random() < 0.3 for _ in range(n)], bool)
        if pa.types.is_dictionary(col.type) or not n:
            return f"{f}: {name}: skipped {how}"
        import pyarrow.compute as pc
        t = t.set_column(i, pa.field(name, col.type, nullable=True),
                         pc.if_else(pa.array(mask), pa.scalar(None, col.type), col))
    elif how in ("shuffle", "reverse"):
        if not n or pa.types.is_dictionary(col.type):
            return f"{f}: {name}: skipped {how}"
        perm = np.arange(n)[::-1] if how == "reverse" else \
            np.random.default_rng(rng.randrange(1 << 30)).permutation(n)
        t = t.set_column(i, name, col.take(pa.array(perm)))
    elif how in ("extreme", "negative", "threads"):
        if not pa.types.is_integer(col.type) or not n:
            return f"{f}: {name}: skipped {how}"
        info = np.iinfo(col.type.to_pandas_dtype())
        pool = {"extreme": [info.min, info.max, 0, (1 << 62) if info.max > 1 << 62 else info.max],
                "negative": [-1, info.min, -12345],
                "threads": [info.min, info.max, -1, 7, 300]}[how]
        pool = [v for v in pool if info.min <= v <= info.max]
        vals = col.fill_null(0).to_numpy(zero_copy_only=False).copy()
        for _ in range(max(1, n // 10)):
            vals[rng.randrange(n)] = rng.choice(pool)
        t = t.set_column(i, pa.field(name, col.type, nullable=col.null_count > 0),
                         pa.array(vals, col.type))
    elif how == "dict_oob":
        if not pa.types.is_dictionary(col.type) or not n:
            return f"{f}: {name}: skipped {how}"
        idx = col.indices.to_numpy(zero_copy_only=False).copy()
        idx[rng.randrange(n)] = rng.choice([len(col.dictionary) + 5, -3, 1 << 30])
        t = t.set_column(i, name, pa.DictionaryArray.from_arrays(
            pa.array(idx, col.indices.type), col.dictionary, safe=False))
    elif how == "utf8":
        if pa.types.is_dictionary(col.type):
            bad = _bad_utf8(col.dictionary)
            if bad is None:
                return f"{f}: {name}: skipped {how}"
            t = t.set_column(i, name, pa.DictionaryArray.from_arrays(
                col.indices, bad, safe=False))
        elif pa.types.is_string(col.type):
            bad = _bad_utf8(col)
            if bad is None:
                return f"{f}: {name}: skipped {how}"
            t = t.set_column(i, name, bad)
        else:
            return f"{f}: {name}: skipped {how}"
    elif how == "empty":
        t = t.slice(0, 0)
    elif how == "extra":
        t = t.append_column(rng.choice(["cpu", "thread_name", "hold_ns", "x"]),
                            pa.array([[k] for k in range(n)], pa.list_(pa.int64())))
    elif how == "dict_ints":
        if not pa.types.is_dictionary(col.type):
            return f"{f}: {name}: skipped {how}"
        t = t.set_column(i, name, pa.DictionaryArray.from_arrays(
            col.indices, pa.array(np.arange(len(col.dictionary)))))
    _write(path, t)
    return f"{f}: column {name!r}: {how}"


def _mutate_values(rng, d):
    """Change values but not types: what loads and reaches the analysis."""
    import numpy as np
    import pyarrow as pa
    files = [f for f in _arrow_files(d) if f != "threads.arrows"]
    if not files:
        return "no table to change"
    f = rng.choice(files)
    path = os.path.join(d, f)
    try:
        t = _read(path)
    except Exception:
        return f"{f}: unreadable, not changed"
    n = t.num_rows
    if not n:
        return f"{f}: empty, not changed"
    gen = np.random.default_rng(rng.randrange(1 << 30))
    ints = [i for i, fl in enumerate(t.schema) if pa.types.is_integer(fl.type)]
    ts = [i for i in ints if t.schema.field(i).name.endswith("_ns")
          and t.schema.field(i).name != "timeout_ns"]
    how = rng.choice(["permute_rows", "swap_ts", "zero_ts", "max_ts", "random_ts",
                      "same_ts", "duplicate_rows", "random_ints", "thread_mix",
                      "one_row", "huge_gap"])
    if how == "permute_rows":
        t = t.take(pa.array(gen.permutation(n)))
    elif how == "duplicate_rows":
        t = pa.concat_tables([t, t.slice(0, max(1, n // 2))]).combine_chunks()
    elif how == "one_row":
        t = t.slice(rng.randrange(n), 1)
    elif how in ("swap_ts", "zero_ts", "max_ts", "random_ts", "same_ts", "huge_gap"):
        if not ts:
            return f"{f}: no timestamps"
        i = rng.choice(ts)
        name = t.schema.field(i).name
        col = t.column(i).combine_chunks()
        v = col.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64).copy()
        if how == "swap_ts" and len(ts) > 1:
            j = rng.choice([k for k in ts if k != i])
            other = t.column(j).combine_chunks()
            t = t.set_column(i, t.schema.field(i), other.cast(col.type))
            t = t.set_column(j, t.schema.field(j), col.cast(other.type))
            _write(path, t)
            return f"{f}: swapped {name} and {t.schema.field(j).name}"
        if how == "zero_ts":
            v[gen.random(n) < 0.2] = 0
        elif how == "max_ts":
            v[gen.random(n) < 0.2] = 1 << 62
        elif how == "random_ts":
            v = gen.integers(0, 1 << 62, n)
        elif how == "same_ts":
            v[:] = v[0]
        else:
            v[n // 2:] += 1 << 50
        mask = col.is_null().to_numpy(zero_copy_only=False) if col.null_count else None
        t = t.set_column(i, t.schema.field(i), pa.array(v, pa.int64(), mask=mask))
        return_name = name
        _write(path, t)
        return f"{f}: {return_name}: {how}"
    elif how in ("random_ints", "thread_mix"):
        cands = [i for i in ints if i not in ts] if how == "random_ints" else \
            [i for i in ints if t.schema.field(i).name in
             ("thread", "prev_owner", "sched_thread", "submit_thread", "vcpu")]
        if not cands:
            return f"{f}: nothing to change"
        i = rng.choice(cands)
        fl = t.schema.field(i)
        info = np.iinfo(fl.type.to_pandas_dtype())
        if how == "thread_mix":
            v = gen.integers(-2, 8, n)
        else:
            v = gen.integers(max(info.min, -(1 << 40)), min(info.max, 1 << 40), n,
                             endpoint=True)
        col = t.column(i)
        mask = col.is_null().to_numpy(zero_copy_only=False) if col.null_count else None
        t = t.set_column(i, fl, pa.array(v.astype(fl.type.to_pandas_dtype()), fl.type,
                                         mask=mask))
        _write(path, t)
        return f"{f}: {fl.name}: {how}"
    _write(path, t)
    return f"{f}: {how}"


def _mutate_accounting(rng, d):
    """meta.json's counts and the losses table: what coverage reads."""
    import pyarrow as pa
    path = os.path.join(d, "meta.json")
    try:
        with open(path) as fh:
            meta = json.load(fh)
        if not isinstance(meta, dict):
            raise ValueError
    except Exception:
        return "meta.json: already corrupt"
    how = rng.choice(["lost", "tables", "losses", "losses", "killed"])
    if how == "lost":
        recs = meta.get("records") if isinstance(meta.get("records"), dict) else {}
        for name in ("vcpu0", "vcpu1", "main", "nobody"):
            if rng.random() < 0.5:
                recs.setdefault(name, {})["lost"] = rng.choice([1, 7, 10 ** 6, 2 ** 62])
        meta["records"] = recs
    elif how == "tables":
        tables = meta.get("tables") if isinstance(meta.get("tables"), dict) else {}
        for name in TABLE_FILES:
            if rng.random() < 0.3:
                tables[name] = rng.choice([0, 1, 5, 10 ** 9])
        meta["tables"] = tables
    elif how == "killed":
        meta["state"] = "running"
        for k in ("end_ns", "records", "tables"):
            meta.pop(k, None)
    else:
        from kvmscope.traceformat import SCHEMAS
        meta["format_version"] = 2
        rows = []
        for _ in range(rng.randrange(1, 8)):
            a = rng.choice([None, 0, 1 << 40, meta.get("start_ns") or 0,
                            (meta.get("start_ns") or 0) + rng.randrange(10 ** 9)])
            b = rng.choice([None, 0, a, (a or 0) + rng.randrange(10 ** 7),
                            (a or 0) - rng.randrange(10 ** 7)])
            rows.append((rng.choice([-1, 0, 1, 2, 3, 300, 32767]),
                         rng.choice([1, 3, 10 ** 6, 0, -5]), a,
                         b if b is None or b >= 0 else 0))
        cols = list(zip(*rows))
        t = pa.Table.from_arrays([pa.array(cols[0], pa.int16()), pa.array(cols[1], pa.int64()),
                                  pa.array(cols[2], pa.int64()), pa.array(cols[3], pa.int64())],
                                 schema=SCHEMAS["losses"])
        _write(os.path.join(d, "losses.arrows"), t)
        meta.setdefault("tables", {})
        if isinstance(meta["tables"], dict):
            meta["tables"]["losses"] = len(rows)
    with open(path, "w") as fh:
        json.dump(meta, fh)
    return f"meta.json: {how}"


def _set_key(meta, key, value):
    parts = key.split(".")
    node = meta
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value


def _mutate_meta(rng, d):
    path = os.path.join(d, "meta.json")
    how = rng.choice(["key", "key", "key", "garbage", "truncate", "utf8", "deep",
                      "huge", "devzero", "fifo", "state", "array"])
    if how in ("key", "state"):
        if os.path.islink(path) or not os.path.isfile(path) or \
                os.path.getsize(path) > 1 << 20:
            return "meta.json: already corrupt"
        try:
            with open(path) as f:
                meta = json.load(f)
        except (OSError, ValueError, RecursionError):
            return "meta.json: already corrupt"
    if how == "key":
        key, value = rng.choice(META_KEYS), rng.choice(ODD_VALUES)
        raw = isinstance(value, str) and value.startswith("100000")
        _set_key(meta, key, "@RAW@" if raw else value)
        text = json.dumps(meta)
        if raw:
            text = text.replace('"@RAW@"', value)
        with open(path, "w") as f:
            f.write(text)
        return f"meta.json: {key} = {str(value)[:40]}"
    if os.path.islink(path) or (os.path.lexists(path) and not os.path.isfile(path)):
        return "meta.json: already corrupt"
    if how == "garbage":
        with open(path, "wb") as f:
            f.write(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))))
    elif how in ("truncate", "utf8") and (os.path.islink(path) or not os.path.isfile(path)
                                          or not os.path.getsize(path)):
        return "meta.json: already corrupt"
    elif how == "truncate":
        size = os.path.getsize(path)
        os.truncate(path, rng.randrange(size))
    elif how == "utf8":
        with open(path, "rb") as f:
            data = bytearray(f.read())
        data[rng.randrange(len(data))] = 0xFF
        with open(path, "wb") as f:
            f.write(bytes(data))
    elif how == "deep":
        with open(path, "w") as f:
            f.write("[" * 200_000)
    elif how == "huge":
        if os.path.islink(path) or not os.path.isfile(path):
            return "meta.json: already corrupt"
        with open(path, "r+b") as f:      # sparse: costs no disk
            f.truncate(17 << 20)
    elif how == "devzero":
        if os.path.isdir(path) and not os.path.islink(path):
            os.rmdir(path)
        elif os.path.lexists(path):
            os.remove(path)
        os.symlink("/dev/zero", path)
    elif how == "fifo":
        if os.path.isdir(path) and not os.path.islink(path):
            os.rmdir(path)
        elif os.path.lexists(path):
            os.remove(path)
        os.mkfifo(path)
    elif how == "state":
        meta["state"] = rng.choice(["running", "failed", "stopped", "complete"])
        if rng.random() < 0.5:
            meta.pop("end_ns", None)
            meta.pop("tables", None)
            meta.pop("records", None)
        if rng.random() < 0.5:
            meta["failure"] = "write failed: No space left on device"
        with open(path, "w") as f:
            json.dump(meta, f)
        return f"meta.json: state {meta['state']}"
    elif how == "array":
        with open(path, "w") as f:
            f.write("[1, 2, 3]")
    return f"meta.json: {how}"


def _mutate_bytes(rng, d):
    files = _arrow_files(d)
    if not files:
        return "no bytes to mutate"
    f = rng.choice(files)
    path = os.path.join(d, f)
    size = os.path.getsize(path)
    how = rng.choice(["truncate", "truncate", "flip", "flip", "flip_head",
                      "zero_range", "insert", "duplicate"])
    with open(path, "rb") as fh:
        data = bytearray(fh.read())
    if how == "truncate":
        data = data[:rng.randrange(size)]
    elif how in ("flip", "flip_head"):
        for _ in range(rng.randrange(1, 9)):
            pos = rng.randrange(min(size, 400) if how == "flip_head" else size)
            data[pos] ^= 1 << rng.randrange(8)
    elif how == "zero_range":
        a, k = rng.randrange(size), rng.randrange(1, 64)
        data[a:a + k] = bytes(len(data[a:a + k]))
    elif how == "insert":
        a = rng.randrange(size)
        data[a:a] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
    elif how == "duplicate":
        a = rng.randrange(size)
        data[a:a] = data[a:a + rng.randrange(1, 200)]
    with open(path, "wb") as fh:
        fh.write(bytes(data))
    return f"{f}: {how} ({size} bytes)"


def _mutate_file(rng, d):
    f = rng.choice(TABLE_FILES + TABLE_FILES + ["meta.json"])
    path = os.path.join(d, f if f == "meta.json" else f + ".arrows")
    how = rng.choice(["delete", "empty", "directory", "symlink_loop",
                      "symlink_devzero", "symlink_dangling", "symlink_other",
                      "trace_is_file"])
    if how == "trace_is_file":
        shutil.rmtree(d)
        with open(d, "w") as fh:
            fh.write("not a trace")
        return "trace directory is a file"
    if os.path.isdir(path) and not os.path.islink(path):
        os.rmdir(path)
    elif os.path.lexists(path):
        os.remove(path)
    if how == "empty":
        open(path, "wb").close()
    elif how == "directory":
        os.mkdir(path)
    elif how == "symlink_loop":
        os.symlink(os.path.basename(path), path)
    elif how == "symlink_devzero":
        os.symlink("/dev/zero", path)
    elif how == "symlink_dangling":
        os.symlink("nowhere.arrows", path)
    elif how == "symlink_other":
        os.symlink(rng.choice(TABLE_FILES) + ".arrows", path)
    return f"{os.path.basename(path)}: {how}"


MUTATORS = [_mutate_bytes, _mutate_bytes, _mutate_column, _mutate_column,
            _mutate_values, _mutate_values, _mutate_values, _mutate_accounting,
            _mutate_meta, _mutate_file]


def _make_sources(root):
    """Copies of the small sample traces, plus a synthetic lossy (format 2,
    with a losses table) and a killed trace."""
    from kvmscope.analysis.synth import make_killed_trace, make_lossy_trace
    out = {}
    for s in SOURCES:
        dst = os.path.join(root, s.replace(os.sep, "_"))
        if s == "synthetic-lossy":
            make_lossy_trace(dst, 2000, seed=1, batch_rows=400)
        elif s == "synthetic-killed":
            make_killed_trace(dst, 2000, seed=1, batch_rows=400)
        else:
            shutil.copytree(os.path.join(TRACES, s), dst)
        out[s] = dst
    return out


def mutation(seed, index, sources, work):
    """Apply mutation *index* of *seed* to a fresh copy of a source trace;
    returns (trace dir, untouched source dir, description, commands)."""
    rng = random.Random(f"{seed}:{index}")
    src = rng.choice(SOURCES)
    d = os.path.join(work, f"m{index}")
    if os.path.isdir(d):
        shutil.rmtree(d)
    elif os.path.lexists(d):
        os.remove(d)
    shutil.copytree(sources[src], d, symlinks=True)
    steps = [rng.choice(MUTATORS) for _ in range(1 if rng.random() < 0.8 else 2)]
    what = []
    for step in steps:
        if not os.path.isdir(d):
            break
        what.append(step(rng, d))
    cmd = COMMANDS[index % len(COMMANDS)]
    out = os.path.join(work, "out")
    window = ["--window", rng.choice(["1ms:3ms", ":2ms", "5ms:", "0ns:1us"])] \
        if rng.random() < 0.3 else []
    argv = {"report": ["report", d, "--format", rng.choice(["text", "json", "csv", "markdown"])],
            "export": ["export", d, "--perfetto", out + ".json", *window],
            "plot": ["plot", d, "--kind", rng.choice(PLOT_KINDS), "-o", out + ".png",
                     "--dpi", "40", *window],
            "diff": ["diff", *(([d, sources[src]]) if rng.random() < 0.5 else [sources[src], d]),
                     "--resamples", "100"]}[cmd]
    validate = ["validate", d] + (["--format", "json"] if rng.random() < 0.25 else [])
    return d, f"{src}: " + "; ".join(what), [validate, argv]


def _run_cli(argv):
    """Run the kvmscope CLI in this process: (status, stdout, stderr,
    traceback or None)."""
    from kvmscope import cli
    target = _output_file(argv)
    if target is not None and os.path.isfile(target):
        os.remove(target)
    out, err = io.StringIO(), io.StringIO()
    old = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    tb = None
    try:
        status = cli.main(argv)
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else 2
    except BaseException:           # a bug: the command must not raise
        tb = traceback.format_exc()
        status = None
    finally:
        sys.stdout, sys.stderr = old
    return status, out.getvalue(), err.getvalue(), tb


def _output_file(argv):
    for flag in ("--perfetto", "-o"):
        if flag in argv:
            return argv[argv.index(flag) + 1]
    return None


def judge(argv, status, out, err, tb):
    """None if the command ended acceptably, else what was wrong."""
    if tb is not None:
        return "raised:\n" + tb
    if "Traceback" in err:
        return "printed a traceback:\n" + err
    if status == 2:
        lines = err.strip("\n").splitlines()
        if len(lines) != 1:
            return f"exit 2 with {len(lines)} stderr lines:\n{err}"
        return None
    ok = (0, 1, 3) if argv[0] == "validate" else (0, 1)
    if status not in ok:
        return f"exit status {status!r}"
    target = _output_file(argv)
    if target is not None:
        if not (os.path.isfile(target) and os.path.getsize(target)):
            return f"exit {status} without writing {target}"
    elif not out.strip():
        return f"exit {status} without output"
    return None


def worker(seed, indices, work):
    """Run mutations; one JSON line per event on stdout."""
    import warnings
    import matplotlib
    matplotlib.use("Agg")
    import importlib
    # Everything a command imports, before the address space is limited.
    for module in ("kvmscope.cli", "kvmscope.analysis.cli", "kvmscope.analysis.plot",
                   "kvmscope.analysis.perfetto", "kvmscope.analysis.regress"):
        importlib.import_module(module)
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    warnings.simplefilter("ignore")
    real = sys.stdout
    sources = _make_sources(os.path.join(work, "src"))

    def emit(**kw):
        real.write(json.dumps(kw) + "\n")
        real.flush()

    for i in indices:
        emit(event="begin", index=i)
        try:
            d, what, commands = mutation(seed, i, sources, work)
        except Exception:
            emit(event="end", index=i, what="(mutation failed)",
                 problems=["building the mutation raised:\n" + traceback.format_exc()])
            continue
        problems, statuses = [], []
        for argv in commands:
            emit(event="run", index=i, what=what, argv=argv)
            status, out, err, tb = _run_cli(argv)
            statuses.append(status)
            bad = judge(argv, status, out, err, tb)
            if bad:
                problems.append(f"kvmscope {' '.join(map(str, argv))}: {bad}")
        emit(event="end", index=i, what=what, problems=problems, statuses=statuses)
        if os.path.isdir(d):
            shutil.rmtree(d, ignore_errors=True)
        elif os.path.lexists(d):
            os.remove(d)


# --------------------------------------------------------------------------
# the test (the watchdog)

def _start(indices, work):
    return subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "worker", str(SEED), work,
         ",".join(map(str, indices))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_corrupt_traces_give_a_result_or_one_line(tmp_path):
    t0 = time.monotonic()
    todo = [list(range(w, COUNT, WORKERS)) for w in range(WORKERS)]
    procs = {}
    for w in range(WORKERS):
        work = str(tmp_path / f"w{w}")
        os.makedirs(work)
        procs[w] = [_start(todo[w], work), work, None, time.monotonic(), ""]
    failures, done, tally = [], 0, {}
    while procs:
        ready, _, _ = select.select([p[0].stdout for p in procs.values()], [], [], 1.0)
        for w, entry in list(procs.items()):
            proc, work, current, since, last_run = entry
            if proc.stdout in ready:
                line = proc.stdout.readline()
                if line:
                    ev = json.loads(line)
                    if ev["event"] == "begin":
                        entry[2], entry[3], entry[4] = ev["index"], time.monotonic(), ""
                    elif ev["event"] == "run":
                        entry[4] = f"{ev['what']}: kvmscope {' '.join(ev['argv'])}"
                    elif ev["event"] == "end":
                        done += 1
                        todo[w].remove(ev["index"])
                        for st in ev.get("statuses", ()):
                            tally[st] = tally.get(st, 0) + 1
                        for p in ev["problems"]:
                            failures.append(f"mutation {ev['index']} ({ev['what']}): {p}")
                        entry[2] = None
                    continue
                # The worker ended: normally, or it crashed.
                proc.wait()
                if current is not None:
                    failures.append(f"mutation {current} ({last_run}): worker died "
                                    f"with status {proc.returncode}:\n"
                                    + proc.stderr.read()[-3000:])
                    todo[w].remove(current)
                if todo[w]:
                    entry[0], entry[2] = _start(todo[w], work), None
                    entry[3] = time.monotonic()
                else:
                    del procs[w]
                continue
            if current is not None and time.monotonic() - since > MUTATION_TIMEOUT_S:
                proc.kill()
                proc.wait()
                failures.append(f"mutation {current} ({last_run}): hung for more "
                                f"than {MUTATION_TIMEOUT_S} s")
                todo[w].remove(current)
                if todo[w]:
                    entry[0], entry[2] = _start(todo[w], work), None
                    entry[3] = time.monotonic()
                else:
                    del procs[w]
    wall = time.monotonic() - t0
    print(f"fuzz: {done} mutations of seed {SEED} in {wall:.1f} s; command exit "
          "statuses: " + ", ".join(f"{k}: {v}" for k, v in sorted(tally.items(), key=str)))
    assert done + len([f for f in failures if "worker died" in f or "hung" in f]) >= COUNT
    assert not failures, (f"KVMSCOPE_FUZZ_SEED={SEED}: {len(failures)} failures "
                          f"(replay one with: python {__file__} {SEED} INDEX)\n\n"
                          + "\n\n".join(failures[:int(os.environ.get("KVMSCOPE_FUZZ_SHOW", "20"))]))


def _replay(seed, index):
    """Run one mutation here, printing what each command did."""
    work = tempfile.mkdtemp(prefix="kvmscope-fuzz-")
    sources = _make_sources(os.path.join(work, "src"))
    d, what, commands = mutation(seed, index, sources, work)
    print(f"mutation {index} of seed {seed}: {what}\ntrace: {d}")
    for argv in commands:
        status, out, err, tb = _run_cli(argv)
        print(f"$ kvmscope {' '.join(argv)}\n-> {status}\n{out[-2000:]}{err}{tb or ''}")
        print("judged:", judge(argv, status, out, err, tb) or "ok")


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        worker(int(sys.argv[2]), [int(x) for x in sys.argv[4].split(",") if x],
               sys.argv[3])
    else:
        _replay(int(sys.argv[1]), int(sys.argv[2]))
