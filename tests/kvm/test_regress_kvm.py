"""kvmscope diff on real recordings: runs of the same configuration report no
regression; a critical section lengthened with --inject-hold is found and
named with its call site (singly and as groups of runs)."""
import json

import pytest

from .helpers import kvmscope

pytestmark = pytest.mark.kvm

SITE = "pio:debugport"


def record(path, inject=None):
    args = ["run", "pio-storm", "--vcpus", 2, "-n", 20000, "-q",
            "--quiet-console", "-o", path]
    if inject:
        args += ["--inject-hold", f"{SITE}={inject}"]
    kvmscope(*args, check=0)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """3 baseline runs, 3 more of the same configuration, 3 with the BQL
    held 1 us longer at pio:debugport and 1 with 2 us, interleaved in time
    so that drift of the machine affects every kind alike."""
    root = tmp_path_factory.mktemp("regress")
    out = {"base": [], "same": [], "inj1us": [], "inj2us": []}
    for i in range(3):
        out["base"].append(record(root / "base" / f"r{i}"))
        out["inj1us"].append(record(root / "inj1us" / f"r{i}", "1us"))
        out["same"].append(record(root / "same" / f"r{i}"))
    out["inj2us"].append(record(root / "inj2us" / "r0", "2us"))
    out["root"] = root
    return out


@pytest.mark.parametrize("i", range(3))
def test_same_config_pair_reports_no_regression(runs, i):
    proc = kvmscope("diff", runs["base"][i], runs["same"][i], check=0)
    assert "no regression" in proc.stdout.splitlines()[-1]
    assert "regressed" not in proc.stdout.split("\n\n")[1]


def test_same_config_groups_report_no_regression(runs):
    proc = kvmscope("diff", *runs["base"], "--vs", *runs["same"],
                    "--format", "json", check=0)
    doc = json.loads(proc.stdout)
    assert not doc["regressed"]
    site = next(r for r in doc["rows"] if r["callsite"] == SITE)
    assert site["base_runs"] == 3 and site["new_runs"] == 3
    assert site["status"] == "unchanged"


def test_injected_hold_is_found_and_named(runs):
    proc = kvmscope("diff", runs["base"][0], runs["inj2us"][0], check=1)
    last = proc.stdout.splitlines()[-1]
    assert last.startswith("REGRESSION") and SITE in last
    # The exit device's call site is not blamed.
    assert "pio:exitdev" not in last


def test_injected_hold_groups_markdown_names_call_site(runs):
    proc = kvmscope("diff", runs["root"] / "base", "--vs",
                    runs["root"] / "inj1us", "--format", "markdown", check=1)
    rows = [l for l in proc.stdout.splitlines() if l.startswith("| bql |")]
    site = next(l for l in rows if f"| {SITE} |" in l)
    assert "| regressed |" in site
    assert not any("| pio:exitdev | regressed |" in l for l in rows)
    assert "3 runs" in proc.stdout


def test_injected_hold_html_report(runs, tmp_path):
    out = tmp_path / "diff.html"
    kvmscope("diff", runs["base"][1], runs["inj1us"][1], "-o", out, check=1)
    page = out.read_text()
    assert 'src="data:image/png;base64,' in page and SITE in page
