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


def test_a_fresh_recording_is_given_back(runs):
    base, _ = runs
    assert len(base.meta["host"]["mutex_wake_ns"]) == 200
    again = base.reexecute()
    assert (again.locks.groupby("callsite", observed=True).size().to_dict()
            == base.locks.groupby("callsite", observed=True).size().to_dict())
    rec, pred = whatif.metrics(base), whatif.metrics(again)
    for k in ("bql_wait_ns", "contended_pct", "exits_per_s"):
        assert abs(pred[k] - rec[k]) <= 0.10 * abs(rec[k]), k


PAIRS = 3   # baselines and real runs, interleaved; a single pair carries both runs' spread


def median(xs):
    return sorted(xs)[len(xs) // 2]


@pytest.fixture(scope="module")
def runs1(tmp_path_factory):
    root = tmp_path_factory.mktemp("whatif1")
    pairs = [(record(root / f"base{i}", vcpus=1),
              record(root / f"hold{i}", "--inject-hold", f"{SITE}=5us", vcpus=1)) for i in range(PAIRS)]
    return [b for b, _ in pairs], [h for _, h in pairs]


def test_a_lengthened_critical_section_costs_what_the_real_one_did(runs1):
    # One vCPU: no CPU shared with another vCPU. Single pairs were off by
    # -15% to +29% here (the baseline's exits/s alone varies by 17% either
    # way); the median of three predictions against the median of three
    # real runs is checked within 30%.
    bases, reals = runs1
    predicted = [b.reexecute(add_hold={SITE: 5000}) for b in bases]
    site = predicted[0].locks[predicted[0].locks["callsite"] == SITE]
    assert site["hold_ns"].min() >= 5000
    b, p, m = (median([whatif.metrics(x)["exits_per_s"] for x in xs]) for xs in (bases, predicted, reals))
    assert p < b and m < b
    assert abs(p - m) <= 0.3 * m, (p, m)


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
    root = tmp_path_factory.mktemp("whatif4")
    pairs = [(runs[0] if i == 0 else record(root / f"base{i}"), record(root / f"four{i}", vcpus=4))
             for i in range(PAIRS)]
    return [b for b, _ in pairs], [f for _, f in pairs]


def test_more_vcpus_than_cpus_share_them_as_measured(runs4):
    # Four vCPUs on this 2-core host: without CPU sharing the prediction
    # would double the guest progress (+100% or more); with it, single pairs
    # were off by -8% to +34% here, and the medians of three pairs by +30.4%
    # and +30.5% in two CI runs (a 2-vCPU recording repeated varies by 12%
    # either way in exits/s, a 4-vCPU one by 10-14%, and the model leaves out
    # what switching between vCPU threads costs the host). So: the medians
    # of three pairs within 45%, and closer than without CPU sharing.
    bases, reals = runs4
    if bases[0].meta["host"]["cpus"] > 3:
        pytest.skip(f"four vCPUs do not outnumber this host's {bases[0].meta['host']['cpus']} CPUs")
    predicted = [b.reexecute(vcpus=4) for b in bases]
    alone = [b.reexecute(vcpus=4, cpus=0) for b in bases]
    assert all(x.meta["replay"]["cpu_stretch"] > 1.4 for x in predicted)
    p, m, a = (median([whatif.metrics(x)["exits_per_s"] for x in xs]) for xs in (predicted, reals, alone))
    assert abs(p - m) <= 0.45 * m, (p, m, a)
    assert abs(p - m) < 0.5 * abs(a - m), (p, m, a)
