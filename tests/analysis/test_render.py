"""Terminal output of report, diff and validate: tables fitted to a width,
colour only on a terminal and never with NO_COLOR, the pager only on a
terminal, the plain layout scripts parse, the progress bar, and the diff
decisions on the shipped regression traces."""

import io
import os
import pty
import re
import subprocess
import sys

import pytest
from rich.cells import cell_len

from kvmscope.analysis import diff, render, report
from kvmscope.analysis.progress import Progress

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REGRESS = os.path.join(ROOT, "traces", "regress")
MIXED = os.path.join(ROOT, "traces", "mixed-2vcpu")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def visible(line):
    return cell_len(ANSI.sub("", line))


class _Tty(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self):
        return True


@pytest.fixture(scope="module")
def groups():
    base = [os.path.join(REGRESS, f"base-{i}") for i in (1, 2, 3)]
    new = [os.path.join(REGRESS, f"hold2us-{i}") for i in (1, 2, 3)]
    return diff(base, new)


# --------------------------------------------------------------------------
# tables

HEADS = ["lock", "callsite", "status", "n", "p50", "change"]
ROWS = [["bql", "pio:debugport", "regressed", "60000", "2.02us", "+20130%"],
        ["bql", "main:dispatch", "insufficient", "6", "631ns", "-25.9%"]]


@pytest.mark.parametrize("width", [60, 200])
@pytest.mark.parametrize("color", [False, True])
def test_tables_fit_the_width(groups, mixed, width, color):
    texts = [groups.to_text(width=width, color=color),
             report.render(mixed, fmt="text", top=5, width=width, color=color)]
    for text in texts:
        assert max(visible(l) for l in text.splitlines()) <= width
        assert ("\x1b[" in text) == color
    # Narrow: columns are left out, and a line says which.
    if width == 60:
        assert "left out to fit 60 characters" in texts[0]
        assert "pio:debugport" in texts[0] and "regressed" in texts[0]
    else:
        assert "left out" not in texts[0]


def test_plain_text_is_the_rich_layout_made_fast():
    right = {3, 4, 5}
    widths = render._widths(HEADS, ROWS)
    console = render._console(render._UNLIMITED, False)
    by_rich = render._rich_lines(console, render._rich_table(
        HEADS, ROWS, right, widths, range(len(HEADS)), None))
    assert render.text_table(HEADS, ROWS, right).splitlines() == by_rich
    assert by_rich[0] == "  lock  callsite       status            n     p50   change"
    assert by_rich[1] == "  ----- -------------- ------------- ------ ------- -------"
    assert by_rich[3].split() == ROWS[1]


def test_plain_text_has_no_escapes_and_whole_rows(groups):
    text = groups.to_text()
    assert "\x1b" not in text
    row = next(l for l in text.splitlines() if "pio:debugport  regressed" in l)
    assert row.split()[:3] == ["bql", "pio:debugport", "regressed"]
    assert all(l == l.rstrip() for l in text.splitlines())


def test_docstring_examples_run():
    import doctest
    from kvmscope.analysis import progress, regress, regress_render
    for mod in (render, progress, regress, regress_render):
        assert doctest.testmod(mod).failed == 0, mod.__name__


def test_markdown_table_escapes_pipes():
    md = render.markdown_table(["a", "n"], [["x|y", "1"]], right={1})
    assert md.splitlines() == ["| a | n |", "|---|---:|", "| x\\|y | 1 |"]


def test_color_only_on_a_terminal_and_never_with_no_color():
    tty = _Tty()
    assert render.use_color(tty, {"TERM": "xterm"})
    assert not render.use_color(tty, {"TERM": "xterm", "NO_COLOR": "1"})
    assert not render.use_color(tty, {"TERM": "dumb"})
    assert not render.use_color(io.StringIO(), {"TERM": "xterm"})
    assert render.terminal_style(io.StringIO()) == {"width": None, "color": False}


def test_pager_command_follows_git():
    assert render.pager_command({}) == "less -FRX"
    assert render.pager_command({"PAGER": "more"}) == "more"
    assert render.pager_command({"PAGER": "more", "KVMSCOPE_PAGER": "less"}) == "less"
    assert render.pager_command({"PAGER": "cat"}) is None
    assert render.pager_command({"PAGER": ""}) is None


# --------------------------------------------------------------------------
# the command line on a real terminal and on a pipe

def run_cli(args, terminal, **env_vars):
    """Run ``python -m kvmscope.analysis ARGS`` with stdout on a pseudo
    terminal or a pipe; returns (exit status, stdout)."""
    argv = [sys.executable, "-m", "kvmscope.analysis", *args]
    env = {k: v for k, v in os.environ.items()
           if k not in ("NO_COLOR", "PAGER", "KVMSCOPE_PAGER", "COLUMNS", "LESS")}
    env.update(TERM="xterm", **env_vars)
    if not terminal:
        proc = subprocess.run(argv, env=env, capture_output=True, text=True,
                              timeout=120)
        return proc.returncode, proc.stdout
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=subprocess.PIPE)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:                     # EIO: the terminal was closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    proc.wait(timeout=120)
    return proc.returncode, b"".join(chunks).decode().replace("\r\n", "\n")


def test_terminal_output_is_fitted_coloured_and_paged(tmp_path):
    paged = tmp_path / "paged.txt"
    args = ["diff", os.path.join(REGRESS, "base-1"), os.path.join(REGRESS, "hold2us-1")]
    status, out = run_cli(args, True, COLUMNS="80", PAGER=f"cat > {paged}")
    assert status == 1 and out == ""            # all of it went to the pager
    text = paged.read_text()
    assert "\x1b[" in text and "REGRESSION" in text
    assert max(visible(l) for l in text.splitlines()) <= 80


def test_no_color_and_no_pager_on_a_terminal(tmp_path):
    paged = tmp_path / "paged.txt"
    args = ["--no-pager", "report", MIXED, "--section", "locks"]
    status, out = run_cli(args, True, COLUMNS="70", NO_COLOR="1", PAGER=f"cat > {paged}")
    assert status == 0 and not paged.exists()
    assert "bql" in out and not re.search(r"\x1b\[[0-9;]*m", out)   # no colour
    assert max(visible(l) for l in out.splitlines()) <= 70


def test_a_pipe_is_never_paged_and_gets_plain_text(tmp_path):
    paged = tmp_path / "paged.txt"
    args = ["validate", os.path.join(REGRESS, "base-1")]
    status, out = run_cli(args, False, COLUMNS="40", PAGER=f"cat > {paged}")
    assert status == 0 and not paged.exists()
    assert out.splitlines()[-1].endswith("records, no violations")
    assert "\x1b" not in out
    status, out = run_cli(["diff", os.path.join(REGRESS, "base-1"),
                           os.path.join(REGRESS, "base-2")], False,
                          PAGER=f"cat > {paged}")
    assert status == 0 and not paged.exists() and "\x1b" not in out
    # Not fitted to COLUMNS: every column, one line per row.
    assert "runs base" in out and "left out" not in out


# --------------------------------------------------------------------------
# the diff decisions on the shipped traces

def test_diff_decisions_on_the_shipped_regression_traces(groups):
    t = groups.table.set_index(["lock", "callsite"])
    assert groups.regressed and groups.exit_status == 1
    assert t.loc[("bql", "pio:debugport"), "status"] == "regressed"
    assert t.loc[("bql", "*"), "status"] == "regressed"
    assert t.loc[("bql", "pio:debugport"), "p_adj"] < 1e-300
    same = diff(os.path.join(REGRESS, "base-1"), os.path.join(REGRESS, "base-2"))
    s = same.table.set_index(["lock", "callsite"])
    assert not same.regressed and same.exit_status == 0
    assert s.loc[("bql", "pio:debugport"), "status"] == "unchanged"
    # scipy's Mann-Whitney gives the figures in docs/regress.md.
    assert s.loc[("bql", "pio:debugport"), "p_value"] == pytest.approx(1.79294761e-17, rel=1e-8)
    assert s.loc[("bql", "pio:debugport"), "cliffs_delta"] == pytest.approx(-0.03261, abs=1e-5)
    assert s.loc[("bql", "pio:debugport"), "p_adj"] == pytest.approx(3.5859e-17, rel=1e-4)


# --------------------------------------------------------------------------
# progress

def test_progress_bar_only_on_a_terminal_and_erased_at_the_end():
    quiet = io.StringIO()
    with Progress(2, "x", stream=quiet) as bar:
        bar.update(1, "a")
        bar.update(1, "b")
    assert quiet.getvalue() == ""
    tty = _Tty()
    with Progress(2, "export", stream=tty, min_interval=0) as bar:
        bar.update(1, "locks")
        drawn = ANSI.sub("", tty.getvalue())
        assert "export" in drawn and "1/2" in drawn and "locks" in drawn
        bar.update(1, "write")
    text = tty.getvalue()
    assert "2/2" in ANSI.sub("", text) and "write" in text
    # The bar is wiped: the last thing written erases its line.
    assert text.endswith("\x1b[2K")
    off = _Tty()
    with Progress(2, "export", stream=off, enabled=False) as bar:
        bar.update(2)
    assert off.getvalue() == ""
