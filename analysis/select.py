"""What a report shows: a time window, threads, call sites, a sort key and a
row limit, as ``perf lock`` users know them (``kvmscope report`` and
``kvmscope path`` share these filters).

Names are checked against the trace: a thread or call site that is not in
it is a :class:`ConfigError` listing the valid ones, never an empty table.
"""

import dataclasses
import fnmatch

from .. import units
from ..errors import ConfigError

#: Sort keys: ``perf lock report -k`` names (acquired, contended, avg_wait,
#: wait_total, wait_max, wait_min) plus the hold-time and blame ones, each
#: mapped to the column it sorts, largest first.
SORT_KEYS = {
    "acquired": "acquisitions",
    "contended": "contentions",
    "avg_wait": "wait_mean_ns",
    "wait_total": "wait_total_ns",
    "wait_max": "wait_max_ns",
    "wait_min": "wait_min_ns",
    "avg_hold": "hold_mean_ns",
    "hold_total": "hold_total_ns",
    "hold_max": "hold_max_ns",
    "hold_min": "hold_min_ns",
    "handoffs": "handoffs",
    "caused": "caused_ns",
}


def split_names(text):
    """``"vcpu0,main"`` (or a list of such strings) -> ``["vcpu0", "main"]``."""
    if text is None:
        return None
    items = [text] if isinstance(text, str) else list(text)
    names = [n.strip() for item in items for n in str(item).split(",")]
    names = [n for n in names if n]
    if not names:
        raise ConfigError("empty list of names")
    return names


def window_bounds(trace, start=None, end=None):
    """Absolute ``(start_ns, end_ns)`` of a window on *trace*.

    Each bound is None (the trace's start or end), an int (an absolute
    timestamp in ns, as in the tables) or a string as on the command line:
    a bare integer is absolute, a number with a unit (``"10ms"``) is an
    offset from the trace start.  *start* may also be a whole
    ``"START:END"`` string or a parsed :class:`kvmscope.units.Window`.

    Examples
    --------
    >>> window_bounds(trace, "10ms", "20ms")        # doctest: +SKIP
    >>> window_bounds(trace, "10ms:")               # doctest: +SKIP
    """
    if isinstance(start, units.Window):
        win = start
    elif isinstance(start, str) and ":" in start and end is None:
        win = units.parse_window(start)
    else:
        text = ":".join("" if b is None else str(int(b)) if not isinstance(b, str) else b
                        for b in (start, end))
        win = units.parse_window(text)
    return win.resolve(trace.start_ns, trace.end_ns)


def callsites_matching(patterns, known, what="call site"):
    """The names in *known* matched by any glob in *patterns*, in *known*'s
    order; a pattern that matches none is an error naming the valid ones."""
    known = [str(k) for k in known]
    out = []
    for pat in patterns:
        hits = fnmatch.filter(known, pat)
        if not hits:
            raise ConfigError(f"unknown {what} {pat!r}; {what}s are {', '.join(sorted(known)) or 'none'}")
        out.extend(h for h in hits if h not in out)
    return [k for k in known if k in out]


def known_callsites(trace):
    """The call sites that occur in *trace*'s ``locks`` rows, sorted."""
    cs = trace.locks["callsite"]
    return sorted(str(c) for c in cs.unique() if str(c))


def sort_frame(df, key):
    """*df* sorted by the column of sort key *key*, largest first (stable;
    rows without a value last).  A frame without that column is returned
    as it is."""
    if key is None:
        return df
    if key not in SORT_KEYS:
        raise ConfigError(f"unknown sort key {key!r}; keys are {', '.join(SORT_KEYS)}")
    col = SORT_KEYS[key]
    if col not in df.columns:
        return df
    return df.sort_values(col, ascending=False, kind="stable", na_position="last") \
        .reset_index(drop=True)


@dataclasses.dataclass
class Selection:
    """The filters of a report.

    Parameters
    ----------
    window : str, tuple or kvmscope.units.Window, optional
        ``"10ms:20ms"`` (relative to the trace start), ``(start, end)``
        with bounds as in :func:`window_bounds`.
    threads : str or list of str, optional
        Thread names (``"vcpu0,main"``).
    callsites : str or list of str, optional
        Call-site globs (``"pio:*"``).
    sort : str, optional
        One of :data:`SORT_KEYS`.
    limit : int, optional
        Rows per table (0 or None: all).
    """

    window: object = None
    threads: object = None
    callsites: object = None
    sort: object = None
    limit: object = None

    def __post_init__(self):
        self.threads = split_names(self.threads)
        if isinstance(self.callsites, str):
            self.callsites = [self.callsites]
        if self.callsites is not None:
            self.callsites = split_names(self.callsites)
        if self.sort is not None and self.sort not in SORT_KEYS:
            raise ConfigError(f"unknown sort key {self.sort!r}; keys are {', '.join(SORT_KEYS)}")

    @property
    def active(self):
        """Whether any row filter (window, threads, call sites) is set."""
        return any(x is not None for x in (self.window, self.threads, self.callsites))

    def bounds(self, trace):
        """The window's absolute bounds on *trace*, or None."""
        if self.window is None:
            return None
        if isinstance(self.window, (tuple, list)) and not isinstance(self.window, units.Window):
            lo, hi = window_bounds(trace, *self.window)
        else:
            lo, hi = window_bounds(trace, self.window)
        if lo >= trace.end_ns or hi <= trace.start_ns:
            raise ConfigError(f"window {self._window_text()} is outside the trace (0 .. "
                              f"{units.format_duration(trace.end_ns - trace.start_ns, sep='')} "
                              "after its start)")
        return lo, hi

    def _window_text(self):
        w = self.window
        if isinstance(w, units.Window):
            return w.text
        if isinstance(w, (tuple, list)):
            return ":".join("" if b is None else str(b) for b in w)
        return str(w)

    def windowed(self, trace):
        """*trace* cut to the window (rows overlapping it, kept whole)."""
        b = self.bounds(trace)
        return trace if b is None else trace.window(*b)

    def thread_names(self, trace):
        """The selected thread names, checked against *trace* (None: all)."""
        if self.threads is None:
            return None
        trace.thread_ids(self.threads)          # raises, listing the valid names
        return list(self.threads)

    def callsite_names(self, trace):
        """The call sites of *trace*'s ``locks`` matched by the globs (None: all)."""
        if self.callsites is None:
            return None
        return callsites_matching(self.callsites, known_callsites(trace))

    def describe(self):
        """One line saying what is selected ('' when nothing is)."""
        parts = []
        if self.window is not None:
            parts.append("window " + self._window_text())
        if self.threads is not None:
            parts.append("threads " + ",".join(self.threads))
        if self.callsites is not None:
            parts.append("call sites " + ",".join(self.callsites))
        if self.sort is not None:
            parts.append(f"sorted by {self.sort}")
        return "; ".join(parts)
