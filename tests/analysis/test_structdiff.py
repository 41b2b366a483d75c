"""Structural diff: call sites, BHs, timers, exit reasons and ports that
appeared, vanished or changed frequency, and waiting caused that moved
between critical sections, in `kvmscope diff` and DiffResult."""
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from kvmscope.analysis import Trace, diff, structdiff
from kvmscope.analysis.synth import write_trace

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
THREADS = pd.DataFrame({"thread": [1, 2], "tid": [11, 12], "name": ["vcpu0", "vcpu1"],
                        "role": "vcpu"})


def _run(path, blocker, blocked, sites):
    """A run of 1000 exits on vcpu0.  First, ``blocker``'s critical section
    (vcpu0, [0, 100]) makes vcpu1 wait 90 ns, then ``blocked``'s (vcpu1,
    [100, 110]) makes vcpu0 (at main:x) wait 5 ns: 95 ns of wait in all.  Then
    uncontended acquisitions on vcpu0: ``sites`` maps call site -> count."""
    rows = [(1, blocker, 0, 0, 100), (2, blocked, 10, 100, 110), (1, "main:x", 105, 110, 120)]
    t = 1000
    for site, n in sites.items():
        for _ in range(n):
            rows.append((1, site, t, t, t + 10))
            t += 20
    locks = pd.DataFrame(rows, columns=["thread", "callsite", "request_ns", "acquired_ns",
                                        "released_ns"])
    n = 1000
    exits = pd.DataFrame({"thread": 1, "exit_ns": 10**6 + np.arange(n) * 100,
                          "entry_ns": 10**6 + np.arange(n) * 100 + 50,
                          "addr": np.where(np.arange(n) < 900, 0x80, 0x3f8), "size": 1,
                          "is_write": True, "data": 0,
                          "device": np.where(np.arange(n) < 900, "debugport", "serial")})
    return Trace.load(write_trace(path, threads=THREADS, locks=locks, exits=exits))


@pytest.fixture
def pair(tmp_path):
    base = _run(tmp_path / "base", "pio:a", "pio:b",
                {"pio:freq": 100, "pio:same": 100, "pio:gone": 50})
    new = _run(tmp_path / "new", "pio:b", "pio:a",
               {"pio:freq": 300, "pio:same": 104, "pio:new": 50})
    return base, new


def test_appeared_vanished_changed(pair):
    st = structdiff.compare([pair[0]], [pair[1]]).set_index(["kind", "name"])
    assert st.loc[("callsite", "bql pio:new"), "status"] == "appeared"
    assert st.loc[("callsite", "bql pio:gone"), "status"] == "vanished"
    assert st.loc[("callsite", "bql pio:freq"), "status"] == "more"
    assert st.loc[("callsite", "bql pio:freq"), "rel_change"] == pytest.approx(2.0)
    assert st.loc[("callsite", "bql pio:freq"), "base_rate"] == pytest.approx(100.0)   # per 1k exits
    # 100 -> 104 is within counting noise.
    assert st.loc[("callsite", "bql pio:same"), "status"] == "same"
    assert st.loc[("exit", "io"), "status"] == "same"
    assert st.loc[("port", "io 0x80"), "base_per_run"] == 900
    assert (st["unit"] == "per 1k exits").all()
    # Changed rows come first.
    order = structdiff.compare([pair[0]], [pair[1]])["status"].tolist()
    assert order[:3] == ["appeared", "vanished", "more"] and set(order[3:]) == {"same"}


def test_caused_moved_though_the_total_did_not(pair):
    base, new = pair
    assert base.caused()["caused_ns"].sum() == new.caused()["caused_ns"].sum()
    c = structdiff.caused_shift([base], [new]).set_index("holder_callsite")
    # pio:a made others wait 90 of 95 ns in the baseline, 5 in the candidate.
    assert c.loc["pio:a", ["base_caused_ns", "new_caused_ns"]].tolist() == [90, 5]
    assert c.loc["pio:a", "status"] == "shrank"
    assert c.loc["pio:b", "status"] == "grew"
    assert c.loc["pio:b", "shift_pct"] == pytest.approx(100 * 85 / 95)


def test_diff_report_lists_structure(pair, tmp_path):
    r = diff([pair[0]], [pair[1]])
    text = r.to_text()
    assert "callsite bql pio:new: appeared" in text
    assert "callsite bql pio:gone: vanished" in text
    assert "callsite bql pio:freq: more: 100 -> 300 per 1k exits (+200%, 10.0 standard errors)" in text
    assert "pio:same" not in text.split("Structure")[1].split("Waiting caused")[0]
    assert "Waiting caused" in text and "+89.5 pts" in text
    md = r.to_markdown()
    assert "### Structure" in md and "appeared" in md
    html = r.to_html()
    assert "<h2>Structure</h2>" in html
    doc = json.loads(r.to_json())
    assert {s["name"]: s["status"] for s in doc["structure"]}["bql pio:gone"] == "vanished"
    assert {s["holder_callsite"]: s["status"] for s in doc["caused"]}["pio:b"] == "grew"
    # Structure is informational: the verdict is about hold times only.
    assert r.exit_status == (1 if r.regressed else 0)


def test_identical_configurations_show_no_structural_change():
    base = sorted(glob.glob(os.path.join(ROOT, "traces", "regress", "base-*")))
    new = sorted(glob.glob(os.path.join(ROOT, "traces", "regress", "hold2us-*")))
    r = subprocess.run([sys.executable, "-m", "kvmscope.analysis", "diff", *base, "--vs", *new,
                        "--format", "json"], capture_output=True, text=True)
    assert r.returncode == 1, r.stderr          # the hold time did regress
    doc = json.loads(r.stdout)
    assert all(s["status"] == "same" for s in doc["structure"])
    # The lengthened critical section's share of the wait grew.
    grew = [c["holder_callsite"] for c in doc["caused"] if c["status"] == "grew"]
    assert grew == ["pio:debugport"]


def test_different_workloads_differ_in_structure():
    mixed = Trace.load(os.path.join(ROOT, "traces", "mixed-2vcpu"))
    storm = Trace.load(os.path.join(ROOT, "traces", "pio-storm-2vcpu"))
    st = structdiff.compare([storm], [mixed])
    appeared = set(st.loc[st.status == "appeared", "name"])
    assert {"bql pio:blk", "aio:complete"} <= appeared
