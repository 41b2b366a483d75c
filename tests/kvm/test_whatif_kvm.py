"""Re-execution against reality, on the real /dev/kvm: a fresh recording is
given back exactly, and a lengthened critical section predicted from a
baseline run costs about the guest progress the real run with that change
lost (docs/whatif.md, bench/whatif_accuracy.py for the full experiment)."""
import pytest

from kvmscope.analysis import Trace, whatif

from .helpers import kvmscope

pytestmark = pytest.mark.kvm

SITE = "pio:debugport"


def record(path, *extra, vcpus=2):
    kvmscope("run", "pio-storm", "--vcpus", vcpus, "-n", 5000, "--lossless", "-q", "--quiet-console",
             "-o", path, *extra, check=0)
    return Trace.load(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("whatif")
    return record(root / "base"), record(root / "hold", "--inject-hold", f"{SITE}=5us")


@pytest.fixture(scope="module")
def runs1(tmp_path_factory):
    root = tmp_path_factory.mktemp("whatif1")
    return (record(root / "base", vcpus=1),
            record(root / "hold", "--inject-hold", f"{SITE}=5us", vcpus=1))


def test_a_fresh_recording_is_given_back(runs):
    base, _ = runs
    again = base.reexecute()
    assert (again.locks.groupby("callsite", observed=True).size().to_dict()
            == base.locks.groupby("callsite", observed=True).size().to_dict())
    rec, pred = whatif.metrics(base), whatif.metrics(again)
    for k in ("bql_wait_ns", "contended_pct", "exits_per_s"):
        assert abs(pred[k] - rec[k]) <= 0.10 * abs(rec[k]), k


def test_a_lengthened_critical_section_costs_what_the_real_one_did(runs1):
    # One vCPU: no CPU shared with another vCPU, which the model does not
    # schedule (docs/whatif.md); measured error here 13%, bound 30%.
    base, real = runs1
    predicted = base.reexecute(add_hold={SITE: 5000})
    site = predicted.locks[predicted.locks["callsite"] == SITE]
    assert site["hold_ns"].min() >= 5000
    b, p, m = whatif.metrics(base), whatif.metrics(predicted), whatif.metrics(real)
    assert p["exits_per_s"] < b["exits_per_s"] and m["exits_per_s"] < b["exits_per_s"]
    assert abs(p["exits_per_s"] - m["exits_per_s"]) <= 0.3 * m["exits_per_s"], (p, m)


def test_two_vcpus_lose_progress_as_measured(runs):
    # Two vCPUs on this 2-core host also compete for CPUs, which the model
    # does not schedule: how much they lose varies from run to run (real runs
    # lost 55% to 68% of exits/s, and their BQL wait went from 0.6 ms to
    # 37 ms), so only the direction is checked here; bench/whatif_accuracy.py
    # measures the size.
    base, real = runs
    predicted = base.reexecute(add_hold={SITE: 5000})
    b, p, m = whatif.metrics(base), whatif.metrics(predicted), whatif.metrics(real)
    assert p["exits_per_s"] < 0.8 * b["exits_per_s"] and m["exits_per_s"] < 0.8 * b["exits_per_s"]
    assert p["bql_wait_ns"] > b["bql_wait_ns"]


@pytest.fixture(scope="module")
def runs4(runs, tmp_path_factory):
    return record(tmp_path_factory.mktemp("whatif4") / "four", vcpus=4)


def test_more_vcpus_than_cpus_share_them_as_measured(runs, runs4):
    # Four vCPUs on this 2-core host: without CPU sharing the prediction
    # would double the guest progress (+100%); with it, six pairs of single
    # runs here were off by -8% to +11%, and one CI run by +30%. That spread
    # is the real runs' own: the same 2-vCPU recording repeated varies by
    # +-12% in exits/s and the 4-vCPU one by +-14%, so one baseline against
    # one real run is checked within 45% (bench/whatif_accuracy.py
    # "vcpus 2 -> 4" compares medians of several runs).
    base, _ = runs
    if base.meta["host"]["cpus"] > 3:
        pytest.skip(f"four vCPUs do not outnumber this host's {base.meta['host']['cpus']} CPUs")
    predicted = base.reexecute(vcpus=4)
    alone = base.reexecute(vcpus=4, cpus=0)
    p, m, a = (whatif.metrics(x)["exits_per_s"] for x in (predicted, runs4, alone))
    assert predicted.meta["replay"]["cpu_stretch"] > 1.4
    assert abs(p - m) <= 0.45 * m, (p, m, a)
    assert abs(p - m) < abs(a - m)
