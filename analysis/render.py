"""Text output shared by ``report``, ``diff`` and ``validate``: tables laid
out by rich (fitted to a terminal's width, coloured only on a terminal),
Markdown tables, and the pager.

Plain text (``width=None``: not a terminal) has one fixed layout that
scripts can parse: rich's layout of the table at its natural width, one
line per row, columns separated by at least two spaces, a dashed rule under
the headers, no trailing spaces and no escape sequences.  It is made
without rich's per-cell work, which large tables cannot afford.

Examples
--------
>>> doc = Document().line("Locks").table(["lock", "acquired"],
...                                      [["bql", "3"]], right={1})
>>> print(doc.render(), end="")
Locks
  lock  acquired
  ----- --------
  bql          3
"""

import io
import math
import os
import shlex
import shutil
import subprocess
import sys

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.measure import Measurement
from rich.pager import Pager
from rich.table import Table
from rich.text import Text

#: A dashed rule under the headers and nothing else drawn: plain ASCII.
_BOX = box.Box("    \n    \n -  \n    \n    \n    \n    \n    \n", ascii=True)
#: Tables are indented under their titles.
_INDENT = "  "
#: Width of plain text: wider than any table, so nothing wraps.
_UNLIMITED = 1 << 16
#: On a terminal, tables up to this many cells are drawn by rich; larger
#: ones (rich takes about 60 us a cell) in the same layout, without colour.
_RICH_CELLS = 20_000
#: The pager when neither KVMSCOPE_PAGER nor PAGER is set (as git: quit if
#: one screen, keep colours, leave the text on the screen).
DEFAULT_PAGER = "less -FRX"


# --------------------------------------------------------------------------
# durations at the trace's resolution

_DURATION_UNITS = (("s", 10 ** 9), ("ms", 10 ** 6), ("us", 10 ** 3), ("ns", 1))


def duration_text(ns, resolution_ns=1, sep=""):
    """A duration for a table cell with no more precision than the trace's
    timestamps have: rounded to *resolution_ns* (``clock.resolution_ns`` of
    ``meta.json``; 1000 for an imported QEMU log) and without digits below
    it; at 1 ns, :func:`kvmscope.units.format_duration`.

    Examples
    --------
    >>> duration_text(2140, 1000), duration_text(0, 1000), duration_text(1_234_000, 1000)
    ('2us', '0us', '1.23ms')
    >>> duration_text(2140)
    '2.14us'
    """
    if resolution_ns <= 1 or ns is None or ns != ns:
        from .. import units
        return units.format_duration(ns, sep=sep)
    r = math.floor(float(ns) / resolution_ns + 0.5) * resolution_ns
    for unit, scale in _DURATION_UNITS:
        if abs(r) >= scale or scale <= resolution_ns:
            v = r / scale
            digits = 0 if abs(v) >= 100 else (1 if abs(v) >= 10 else 2)
            while digits and 10.0 ** -digits < resolution_ns / scale * (1 - 1e-9):
                digits -= 1
            return f"{v:.{digits}f}{sep}{unit}"
    raise AssertionError("unreachable")        # pragma: no cover


# --------------------------------------------------------------------------
# where the output goes

def is_terminal(stream=None):
    """True when *stream* (default stdout) is a terminal."""
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:                      # a closed file
        return False


def use_color(stream=None, environ=None):
    """Colour on *stream*: only on a terminal, never with ``NO_COLOR`` set
    (https://no-color.org) or ``TERM=dumb``."""
    env = os.environ if environ is None else environ
    return (is_terminal(stream) and not env.get("NO_COLOR")
            and env.get("TERM") != "dumb")


def terminal_style(stream=None):
    """``{"width": ..., "color": ...}`` for text written to *stream*: the
    terminal's width and colour on a terminal, else ``width=None`` (plain
    text, natural width) and no colour.

    Examples
    --------
    >>> import io
    >>> terminal_style(io.StringIO())
    {'width': None, 'color': False}
    """
    stream = sys.stdout if stream is None else stream
    if not is_terminal(stream):
        return {"width": None, "color": False}
    # COLUMNS first, then the terminal's size, as the shell sets them.
    return {"width": max(shutil.get_terminal_size().columns, 20),
            "color": use_color(stream)}


def _console(width, color):
    return Console(file=io.StringIO(), width=width,
                   color_system="standard" if color else None,
                   force_terminal=bool(color), force_jupyter=False,
                   force_interactive=False, no_color=not color,
                   highlight=False, markup=False, emoji=False,
                   legacy_windows=False, _environ={})


# --------------------------------------------------------------------------
# tables

def _widths(heads, rows):
    """Natural width of each column, in terminal cells."""
    return [max([cell_len(h)] + [cell_len(r[i]) for r in rows])
            for i, h in enumerate(heads)]


def _rich_table(heads, rows, right, widths, shown, styles):
    """The rich Table; every column keeps its whole width (a name or a
    number cut in two reads as two), so fitting leaves columns out."""
    table = Table(box=_BOX, show_edge=False, pad_edge=False,
                  padding=(0, 1, 0, 0), header_style="bold",
                  highlight=False)
    for i in shown:
        table.add_column(heads[i], justify="right" if i in right else "left",
                         no_wrap=True, width=widths[i])
    for k, row in enumerate(rows):
        style = styles[k] if styles else {}
        table.add_row(*[Text(row[i], style=style.get(i) or "")
                        for i in shown])
    return table


def _fit(console, heads, right, widths, drop, width):
    """Columns shown and the headers left out: those of *drop*, in that
    order, while rich lays the table out wider than *width*."""
    shown = list(range(len(heads)))
    hidden = []
    unlimited = console.options.update_width(_UNLIMITED)
    for group in drop:
        # Measuring the headers alone is enough: the widths are fixed.
        table = _rich_table(heads, [], right, widths, shown, None)
        if Measurement.get(console, unlimited, table).maximum <= width:
            break
        group = [group] if isinstance(group, int) else list(group)
        if len(shown) <= len(group):
            break
        for i in group:
            shown.remove(i)
            hidden.append(heads[i])
    return shown, hidden


def _rich_lines(console, table):
    console.print(table, crop=True)
    text = console.file.getvalue()
    console.file.seek(0)
    console.file.truncate()
    return [_INDENT + line.rstrip() if line.strip() else ""
            for line in text.splitlines()]


def _plain_lines(heads, rows, right, widths, shown, width):
    """The lines rich lays out for :func:`_rich_table` without colour when
    the table fits, made directly: rich takes about 60 us per cell, this
    1 us, and a report of every port of a trace has tens of thousands of
    rows.  What does not fit *width* is cut."""
    def cut(text):
        return text if width is None else text[:width]

    def line(cells):
        # Each cell padded to its width, a space of padding, a space between.
        return cut(_INDENT + "  ".join(
            (" " * (widths[i] - cell_len(c)) + c) if i in right
            else c + " " * (widths[i] - cell_len(c))
            for i, c in zip(shown, cells))).rstrip()
    out = [line([heads[i] for i in shown]),
           # The rule covers the padding too, but the edges have none.
           cut(_INDENT + " ".join("-" * (widths[i] + (i != shown[-1]))
                                  for i in shown))]
    out += [line([r[i] for i in shown]) for r in rows]
    return out


def text_table(heads, rows, right=(), *, width=None, color=False, drop=(),
               styles=None):
    """A table as text: plain, or fitted to *width* columns.

    Parameters
    ----------
    heads : list of str
    rows : list of list of str
        Cells, already formatted.
    right : set of int
        Right-aligned columns (numbers).
    width : int, optional
        Fit the table, indent included, to this many columns: leave out the
        columns of *drop* (in that order) while it does not fit, and cut
        what still does not.  ``None``: plain text at the natural width.
    color : bool
        Bold headers and the cells' *styles* as ANSI escapes.
    drop : sequence of int or tuple of int
        Columns that may be left out to fit *width*, first dropped first (a
        tuple: together).  A line under the table names the ones left out.
    styles : list of dict, optional
        Per row, ``{column: rich style}`` (``"red"``, ``"bold green"``);
        ignored without *color*.

    Returns
    -------
    str
        Lines indented by two spaces, each ending in a newline.

    Examples
    --------
    >>> print(text_table(["site", "n"], [["pio:a", "12"], ["mmio", "3"]],
    ...                  right={1}), end="")
      site    n
      ------ --
      pio:a  12
      mmio    3
    """
    right = set(right)
    rows = [[str(c) for c in r] for r in rows]
    widths = _widths(heads, rows)
    avail = _UNLIMITED if width is None else max(width - len(_INDENT), 1)
    console = _console(avail, color)
    shown, hidden = (list(range(len(heads))), []) if width is None else \
        _fit(console, heads, right, widths, drop, avail)
    if width is not None and len(rows) * len(shown) <= _RICH_CELLS:
        lines = _rich_lines(console, _rich_table(heads, rows, right, widths,
                                                 shown, styles))
    else:
        lines = _plain_lines(heads, rows, right, widths, shown, width)
    if hidden:
        lines += _rich_lines(console, Text(
            f"({len(hidden)} column{'s' * (len(hidden) > 1)} left out to fit "
            f"{width} characters: {', '.join(hidden)})", style="dim"))
    return "\n".join(lines) + "\n"


def markdown_table(heads, rows, right=()):
    """A GitHub-flavoured Markdown table (``|`` in cells escaped).

    Examples
    --------
    >>> print(markdown_table(["site", "n"], [["a|b", "1"]], right={1}), end="")
    | site | n |
    |---|---:|
    | a\\|b | 1 |
    """
    def row(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|")
                                 for c in cells) + " |"
    out = [row(heads), "|" + "|".join("---:" if i in right else "---"
                                      for i in range(len(heads))) + "|"]
    out += [row(r) for r in rows]
    return "\n".join(out) + "\n"


class Document:
    """Lines, blocks and tables of a text report, rendered as plain text or
    for a terminal (:meth:`render`).

    Examples
    --------
    >>> doc = Document().line("verdict: OK", style="bold green")
    >>> doc.render()
    'verdict: OK\\n'
    """

    def __init__(self):
        self._parts = []

    def line(self, text="", style=None):
        """One line, wrapped on a terminal; *style* applies there."""
        self._parts.append(("line", str(text), style))
        return self

    def block(self, text):
        """Preformatted lines, written as they are."""
        if text:
            self._parts.append(("block", text if text.endswith("\n")
                                else text + "\n", None))
        return self

    def table(self, heads, rows, right=(), drop=(), styles=None):
        """A table (see :func:`text_table`)."""
        self._parts.append(("table", (heads, rows, right, drop, styles),
                            None))
        return self

    def render(self, width=None, color=False):
        """The text: plain (``width=None``, no colour) or for a terminal
        *width* columns wide, with colour if *color*."""
        out = []
        for kind, value, style in self._parts:
            if kind == "table":
                heads, rows, right, drop, styles = value
                out.append(text_table(heads, rows, right, width=width,
                                      color=color, drop=drop, styles=styles))
            elif kind == "block":
                out.append(value)
            elif width is None or not value:
                out.append(value + "\n")
            else:
                # Wrapped at word boundaries to the terminal's width.
                console = _console(width, color)
                console.print(Text(value, style=style or ""))
                out.append(console.file.getvalue())
        return "".join(out)


# --------------------------------------------------------------------------
# the pager

def pager_command(environ=None):
    """The pager to run, as git chooses it: ``KVMSCOPE_PAGER``, else
    ``PAGER``, else ``less -FRX``; None when it is empty or ``cat``."""
    env = os.environ if environ is None else environ
    cmd = env.get("KVMSCOPE_PAGER", env.get("PAGER", DEFAULT_PAGER)).strip()
    return None if cmd in ("", "cat") else cmd


class CommandPager(Pager):
    """A rich :class:`~rich.pager.Pager` that pipes text to the pager
    command, through the shell as git does (``$PAGER`` may hold options).

    ``LESS=FRX`` is set when ``LESS`` is not, so a plain ``less`` also
    quits on one screen and keeps colours.  :meth:`show` returns False when
    the command cannot be found, and the caller writes the text itself.
    """

    def __init__(self, command):
        self.command = command

    def show(self, content):
        try:
            program = shlex.split(self.command)[0]
        except (ValueError, IndexError):
            return False
        if not shutil.which(program):
            return False
        env = dict(os.environ)
        env.setdefault("LESS", "FRX")
        env.setdefault("LV", "-c")
        proc = subprocess.Popen(self.command, shell=True, stdin=subprocess.PIPE,
                                env=env)
        try:
            proc.stdin.write(content.encode("utf-8", "replace"))
            proc.stdin.close()
        except BrokenPipeError:             # the reader quit early
            pass
        while True:
            try:
                proc.wait()
                return True
            except KeyboardInterrupt:       # the pager handles Ctrl-C itself
                continue


def emit(text, stream=None, pager=True):
    """Write *text* to *stream* (default stdout), through the pager when
    *pager* is true and *stream* is a terminal; never a pager otherwise, so
    pipes and tests get the text as it is.  A reader that went away
    (``| head``) is not an error."""
    stream = sys.stdout if stream is None else stream
    if pager and is_terminal(stream):
        command = pager_command()
        if command:
            stream.flush()
            if CommandPager(command).show(text):
                return
    try:
        stream.write(text)
        stream.flush()
    except BrokenPipeError:
        # Keep the interpreter from complaining again at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
