"""A progress bar for long analyses (plots, exports), drawn by rich on stderr
when stderr is a terminal, and nothing at all otherwise.

Examples
--------
>>> with Progress(3, "export") as bar:       # silent unless stderr is a TTY
...     for step in ("exits", "locks", "write"):
...         bar.update(1, step)
"""

import sys
import time

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, TaskProgressColumn,
                           TextColumn)
from rich.progress import Progress as _RichProgress

from .render import is_terminal


class Progress:
    """Counts steps toward *total* and redraws one bar on stderr.

    Parameters
    ----------
    total : int
        Steps expected.
    desc : str
        Label shown before the bar.
    stream : file, optional
        Where to draw (default ``sys.stderr``).  Nothing is written unless
        it is a terminal, so logs, pipes and CI stay clean.
    min_interval : float
        Seconds between redraws; the last one is always drawn.
    enabled : bool, optional
        False: never draw (a caller's ``progress=False``).  Default: draw
        when *stream* is a terminal.
    """

    def __init__(self, total, desc="", stream=None, min_interval=0.1,
                 enabled=None):
        self.total = max(int(total), 1)
        self.desc = desc
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = is_terminal(self.stream) and enabled is not False
        self.min_interval = min_interval
        self._drawn = 0.0
        self._bar = None
        if self.enabled:
            # Redrawn only by update(): no refresh thread, stdout untouched.
            self._bar = _RichProgress(
                TextColumn("{task.description}"), BarColumn(),
                TaskProgressColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[note]}"),
                console=Console(file=self.stream, highlight=False,
                                force_jupyter=False),
                auto_refresh=False, transient=True, redirect_stdout=False,
                redirect_stderr=False)
            self._task = self._bar.add_task(desc, total=self.total, note="")
            self._bar.start()

    def update(self, n=1, note=""):
        """Advance by *n* steps; *note* says what is being done now."""
        self.done = min(self.done + n, self.total)
        if self._bar is None:
            return
        self._bar.update(self._task, completed=self.done, note=note)
        now = time.monotonic()
        if self.done < self.total and now - self._drawn < self.min_interval:
            return
        self._drawn = now
        self._bar.refresh()

    def close(self):
        """Erase the bar (the caller prints any result itself)."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
