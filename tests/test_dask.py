"""The store's per-call-site statistics and the history on Dask: a
``distributed.LocalCluster`` with 2 worker processes, and Dask's local
schedulers, give the same numbers as the pandas path."""
import json
import os

import pandas as pd
import pytest

pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")
pytest.importorskip("ruptures")

from kvmscope.analysis import Store  # noqa: E402
from kvmscope.analysis import history as h  # noqa: E402

from kvm.helpers import kvmscope  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRACES = [os.path.join(ROOT, "traces", "regress", f"{side}-{i}")
          for side in ("base", "hold2us") for i in (1, 2, 3)] \
    + [os.path.join(ROOT, "traces", t) for t in ("mixed-2vcpu", "pio-storm-2vcpu")]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = Store(tmp_path_factory.mktemp("dask") / "s", create=True)
    for i, path in enumerate(TRACES):
        s.add(path, labels={"n": str(i)})
    return s


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, silence_logs=40) as c:
        yield c


@pytest.mark.parametrize("metric", ["hold", "wait"])
def test_a_two_worker_cluster_gives_the_pandas_numbers(store, cluster, metric):
    want = h.store_stats(store, metric)
    got = h.store_stats(store, metric, scheduler=cluster.scheduler_address)
    assert len(want) > 10 and set(want.run) == set(store.run_ids())
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True))
    # both workers took part
    with distributed.Client(cluster.scheduler_address) as client:
        assert len(client.scheduler_info()["workers"]) == 2


@pytest.mark.parametrize("scheduler", ["threads", "processes"])
def test_local_schedulers_give_the_pandas_numbers(store, scheduler):
    pd.testing.assert_frame_equal(h.store_stats(store, scheduler=scheduler),
                                  h.store_stats(store))


def test_the_history_command_on_the_cluster(store, cluster):
    args = ["history", store.path, "--order", "label:n", "--format", "json", "--min-count", 1]
    local = json.loads(kvmscope(*args).stdout)
    remote = json.loads(kvmscope(*args, "--scheduler", cluster.scheduler_address).stdout)
    local["options"].pop("scheduler")
    remote["options"].pop("scheduler")
    assert remote == local and len(local["series"]) > 10


def test_an_unreachable_scheduler_is_one_line(store):
    proc = kvmscope("history", store.path, "--scheduler", "tcp://127.0.0.1:9", check=2)
    assert proc.stderr.count("\n") == 1 and "Dask scheduler" in proc.stderr
