"""SQL over a trace or a run store, on DuckDB.

Every table of the format is a view (``threads``, ``exits``, ``locks``,
``bh``, ``timers``, ``aio``, ``loop``, ``irqs``, ``losses``) with the
derived durations (``wait_ns``, ``hold_ns``, ...) and ``thread_name``; over a
store each view also has a ``run`` column, and the ``runs`` view has one row
per run (start time, labels, configuration).  DuckDB is an optional
dependency (``pip install 'kvmscope[runs]'``).
"""

import os

from ..errors import KvmscopeError
from . import convert as _convert
from .schema import SCHEMAS, TABLES

EXTRA = "runs"


class SqlError(KvmscopeError, ValueError):
    """A query DuckDB refused, or DuckDB missing; one line."""


def require(module, what="this"):
    """Import an optional dependency of the ``runs`` extra, or raise a
    one-line error naming the extra to install."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise SqlError(f"{what} needs {module.split('.')[0]}: "
                       f"pip install 'kvmscope[{EXTRA}]'") from None


def _connect():
    duckdb = require("duckdb", "SQL")
    con = duckdb.connect(":memory:")
    # Two cores shared with others: DuckDB's default is every core.
    con.execute(f"set threads to {max(1, min(4, os.cpu_count() or 1))}")
    return con


def _run(con, query):
    duckdb = require("duckdb", "SQL")
    try:
        return con.execute(query).df()
    except duckdb.Error as e:
        text = " ".join(str(e).split())
        raise SqlError(text[:300] + ("..." if len(text) > 300 else "")) from None


def trace_connection(tables):
    """A DuckDB connection with a view per table of a trace.

    Parameters
    ----------
    tables : dict of str to pyarrow.Table
        The trace's tables as loaded (format columns only).
    """
    con = _connect()
    threads = tables["threads"]
    for name in TABLES:
        con.register(f"_{name}", _convert.enrich(tables[name], name, threads))
        con.execute(f'create view "{name}" as select * from "_{name}"')
    return con


def query_trace(trace, query):
    """Run *query* over one trace; returns a pandas DataFrame.

    Examples
    --------
    >>> t.sql("select callsite, median(hold_ns) from locks group by 1")  # doctest: +SKIP
    """
    con = trace_connection({n: trace.arrow(n) for n in TABLES})
    try:
        return _run(con, query)
    finally:
        con.close()


def _quote(path):
    return "'" + path.replace("'", "''") + "'"


def store_connection(store):
    """A DuckDB connection with a view per table over every run of *store*
    (a ``run`` column from the ``run=<id>`` partitions), and ``runs``."""
    import pyarrow as pa
    con = _connect()
    ids = store.run_ids()
    for name in TABLES:
        files = [p for _, p in store.table_files(name, ids)]
        if files:
            src = ", ".join(_quote(p) for p in files)
            derived = "".join(f", {end} - {start} as {col}"
                              for col, end, start in _convert.DERIVED.get(name, ()))
            con.execute(
                f'create view "{name}" as select *{derived} from read_parquet([{src}], '
                "hive_partitioning = true, hive_types = {'run': VARCHAR}, "
                "union_by_name = true)")
        else:
            empty = _convert.enrich(SCHEMAS[name].empty_table(), name, None)
            empty = empty.append_column("run", pa.array([], pa.string()))
            con.register(f"_{name}", empty)
            con.execute(f'create view "{name}" as select * from "_{name}"')
    runs = store.runs()
    con.register("_runs", runs.assign(labels=[str(sorted(x.items())) for x in runs["labels"]]))
    # labels as a MAP straight from the files, where there are runs
    files = [os.path.join(store.run_dir(r), "run.parquet") for r in ids]
    if files:
        src = ", ".join(_quote(p) for p in files)
        con.execute(f"create view runs as select r.*, p.position from read_parquet([{src}], hive_partitioning = false) r "
                    "join _runs p using (run)")
    else:
        con.execute("create view runs as select * from _runs")
    return con


def query_store(store, query):
    """Run *query* over a store; returns a pandas DataFrame."""
    con = store_connection(store)
    try:
        return _run(con, query)
    finally:
        con.close()
