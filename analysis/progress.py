"""A minimal progress line for long analyses (plots, exports): ``\\r``
updates on stderr when stderr is a terminal, nothing at all otherwise.

Examples
--------
>>> with Progress(3, "export") as bar:       # silent unless stderr is a TTY
...     for step in ("exits", "locks", "write"):
...         bar.update(1, step)
"""

import sys
import time


class Progress:
    """Counts steps toward *total* and redraws one status line on stderr.

    Parameters
    ----------
    total : int
        Steps expected.
    desc : str
        Label shown before the count.
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
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = bool(isatty and isatty()) and enabled is not False
        self.min_interval = min_interval
        self._drawn = 0.0
        self._width = 0

    def update(self, n=1, note=""):
        """Advance by *n* steps; *note* says what is being done now."""
        self.done = min(self.done + n, self.total)
        if not self.enabled:
            return
        now = time.monotonic()
        if self.done < self.total and now - self._drawn < self.min_interval:
            return
        self._drawn = now
        line = (f"{self.desc}: {100 * self.done // self.total:3d}% "
                f"({self.done}/{self.total}) {note}")
        # Pad with spaces to wipe a longer previous line.
        self.stream.write("\r" + line.ljust(self._width))
        self.stream.flush()
        self._width = len(line)

    def close(self):
        """Erase the status line (the caller prints any result itself)."""
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
        self._width = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
