"""Units of kvmscope's options and messages, in one place: durations, time
windows, sizes and rates, parsed from text and formatted for people.

Durations are integer nanoseconds, sizes integer bytes, rates per second.
Text takes a number and an optional unit (``500ns``, ``2us``, ``1.5ms``, ``2s``,
``16M``, ``1G``, ``10k/s``); a bare number is in the default unit the caller
states. Pure Python: no numpy, no pandas.

Examples
--------
>>> from kvmscope import units
>>> units.parse_duration("1.5ms"), units.parse_duration("2", default_unit="s")
(1500000, 2000000000)
>>> units.parse_size("16M"), units.format_size(3 << 30)
(16777216, '3G')
>>> units.format_duration(12_345), units.format_duration(50_000, exact=True)
('12.3 us', '50 us')
"""

import collections
import math
import re

from .errors import ConfigError

#: Nanoseconds in one of each duration unit.
NS_PER = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
          "min": 60_000_000_000, "h": 3_600_000_000_000}
#: Bytes in one of each size unit (binary: 1K = 1024).
BYTES_PER = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
#: Multiplier of each rate prefix.
RATE_PER = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}

_NUMBER = r"([+-]?(?:\d[\d_]*(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?)"
_DURATION = re.compile(_NUMBER + r"\s*(ns|us|µs|ms|s|min|h)?", re.I)
_SIZE = re.compile(_NUMBER + r"\s*([kmgt]?)(?:i?b)?", re.I)
_RATE = re.compile(_NUMBER + r"\s*([kmg]?)(?:/s)?", re.I)
# Larger units first; the first whose value is >= 1 formats a duration.
_SHOWN = (("h", NS_PER["h"]), ("min", NS_PER["min"]), ("s", NS_PER["s"]),
          ("ms", NS_PER["ms"]), ("us", NS_PER["us"]), ("ns", 1))


def _bad(kind, text, name, why):
    """The one-line message for text that is not a *kind*."""
    return f"bad {kind} {text!r}" + (f" for {name}" if name else "") + f": {why}"


def _number(text, pattern, name, kind, example):
    """(float value, unit) from *text*, or ConfigError naming what was wrong."""
    m = pattern.fullmatch(str(text).strip())
    if m is None:
        raise ConfigError(_bad(kind, text, name, f"use e.g. {example}"))
    value = float(m.group(1).replace("_", ""))
    if not math.isfinite(value):
        raise ConfigError(_bad(kind, text, name, "not finite"))
    return value, (m.group(2) or "")


def parse_duration(text, default_unit="ns", name=None):
    """A duration in integer nanoseconds.

    Parameters
    ----------
    text : str, int or float
        ``"500ns"``, ``"2us"``, ``"1.5ms"``, ``"2s"``, ``"5min"``, ``"1h"``, or a
        bare number, which is in *default_unit*. Numbers are taken as they are.
    default_unit : str
        Unit of a bare number: ``ns``, ``us``, ``ms``, ``s``, ``min`` or ``h``.
    name : str, optional
        The option or setting, for the error message (``--duration``).

    Returns
    -------
    int
        Nanoseconds, rounded; may be negative if the text is (callers check ranges).

    Raises
    ------
    ConfigError
        Not a number with a known unit, or not finite (``nan``, ``inf``).

    Examples
    --------
    >>> parse_duration("2us"), parse_duration(250), parse_duration("1", "ms")
    (2000, 250, 1000000)
    """
    if isinstance(text, bool):
        raise ConfigError(_bad("duration", text, name, "not a number"))
    if isinstance(text, (int, float)):
        if not math.isfinite(text):
            raise ConfigError(_bad("duration", text, name, "not finite"))
        value, unit = text, default_unit
    else:
        value, unit = _number(text, _DURATION, name, "duration",
                              f"500ns, 2us, 1.5ms, 2s (a bare number is in {default_unit})")
        unit = unit.lower() or default_unit
    return int(round(value * NS_PER[unit]))


def format_duration(ns, sep=" ", exact=False, micro="us"):
    """A duration in ns as text with its unit.

    Parameters
    ----------
    ns : int or float
    sep : str
        Between the number and the unit.
    exact : bool
        The largest unit that shows *ns* exactly (``50us``, ``1500ns``), for
        ranges and settings; otherwise three significant digits.
    micro : str
        How microseconds are written: ``us``, or ``µs`` for plots.

    Examples
    --------
    >>> format_duration(850), format_duration(12_345), format_duration(4_560_000)
    ('850 ns', '12.3 us', '4.56 ms')
    >>> format_duration(60_000_000_000, sep="", exact=True)
    '1min'
    """
    if ns is None or (isinstance(ns, float) and math.isnan(ns)):
        return "-"
    if exact and float(ns).is_integer():
        ns = int(ns)
        for unit, scale in _SHOWN:
            if ns and ns % scale == 0:
                return f"{ns // scale}{sep}{micro if unit == 'us' else unit}"
        return "0"
    a = abs(float(ns))
    for unit, scale in _SHOWN[2:]:            # seconds at most: "90.0 s", not "1.50 min"
        v = ns / scale
        if a >= scale or unit == "ns":
            digits = 0 if unit == "ns" or abs(v) >= 100 else (1 if abs(v) >= 10 else 2)
            return f"{v:.{digits}f}{sep}{micro if unit == 'us' else unit}"
    raise AssertionError("unreachable")        # pragma: no cover


def parse_size(text, name=None):
    """A size in bytes: ``"4096"``, ``"16K"``, ``"16M"``, ``"1.5G"``, ``"1T"``
    (binary units; ``16MiB`` and ``16MB`` mean the same).

    Raises
    ------
    ConfigError
        Not a size, or not a whole number of bytes.

    Examples
    --------
    >>> parse_size("16M"), parse_size("4096"), parse_size("1.5K")
    (16777216, 4096, 1536)
    """
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    value, unit = _number(text, _SIZE, name, "size", "4096, 16M, 1G")
    size = value * BYTES_PER[unit.lower()]
    if not size.is_integer():
        raise ConfigError(_bad("size", text, name, "not a whole number of bytes"))
    return int(size)


def format_size(n):
    """A size in bytes as short text: the largest binary unit that shows it
    exactly (``16M``, ``3G``, ``4K``), else the byte count.

    Examples
    --------
    >>> format_size(16 << 20), format_size(4096), format_size(1000)
    ('16M', '4K', '1000')
    """
    n = int(n)
    for unit in ("T", "G", "M", "K"):
        scale = BYTES_PER[unit.lower()]
        if n and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def parse_percent(text, name="threshold", high=10000):
    """Parse a percentage into a fraction: ``"10%"`` or ``"10"`` (percent),
    or a number that already is a fraction (an int or float, from Python).

    Raises ConfigError (one line naming *name*) for malformed text, a
    negative value, or one above *high* percent.

    Examples
    --------
    >>> parse_percent("10%"), parse_percent("2.5"), parse_percent(0.1)
    (0.1, 0.025, 0.1)
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text) * 100
    else:
        t = str(text).strip()
        try:
            value = float(t[:-1] if t.endswith("%") else t)
        except ValueError:
            raise ConfigError(f"bad {name} {text!r}: use a percentage such as 10%") from None
    if not math.isfinite(value) or not 0 <= value <= high:
        raise ConfigError(f"{name} {text} out of range: use 0% .. {high:g}%")
    return value / 100


def parse_rate(text, name=None):
    """A rate per second: ``"200"``, ``"10k"``, ``"1.5M/s"`` (decimal prefixes).

    Examples
    --------
    >>> parse_rate("10k/s"), parse_rate("1.5M")
    (10000.0, 1500000.0)
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool) and math.isfinite(text):
        return float(text)
    value, prefix = _number(text, _RATE, name, "rate", "200/s, 10k/s, 1.5M/s")
    return value * RATE_PER[prefix.lower()]


def format_rate(per_s):
    """A rate per second as short text: ``850``, ``12.3k``, ``1.50M``.

    Examples
    --------
    >>> format_rate(850), format_rate(120_007), format_rate(1_500_000)
    ('850', '120.0k', '1.50M')
    """
    if per_s >= 1e6:
        return f"{per_s / 1e6:.2f}M"
    if per_s >= 1e3:
        return f"{per_s / 1e3:.1f}k"
    return f"{per_s:.0f}"


class Bound(collections.namedtuple("Bound", "ns relative")):
    """One end of a time window: ``ns`` after the trace start (``relative``),
    or an absolute timestamp in ns on the trace's clock."""

    __slots__ = ()


class Window(collections.namedtuple("Window", "start end text")):
    """A parsed ``START:END``: two :class:`Bound` (None: the trace's start or
    end) and the text they came from."""

    __slots__ = ()

    def resolve(self, start_ns, end_ns):
        """``(start, end)`` in absolute ns for a trace spanning *start_ns* ..
        *end_ns*; ConfigError if the window is empty."""
        lo = start_ns if self.start is None else \
            self.start.ns + (start_ns if self.start.relative else 0)
        hi = end_ns if self.end is None else \
            self.end.ns + (start_ns if self.end.relative else 0)
        if hi <= lo:
            raise ConfigError(f"empty window {self.text!r}: end <= start")
        return lo, hi


def parse_window(text, name="window"):
    """Parse a time window ``START:END``.

    A bare integer is an absolute timestamp in ns on the trace's clock (as in
    the tables); a number with a unit (``ns``, ``us``, ``ms``, ``s``) is an offset
    from the trace start. Either side may be empty.

    Returns
    -------
    Window
        Resolve it against a trace with ``window.resolve(start_ns, end_ns)``.

    Raises
    ------
    ConfigError
        Malformed text, a negative bound, or an end before the start when both
        sides are of the same kind.

    Examples
    --------
    >>> parse_window("10ms:12.5ms").resolve(1000, 10**9)
    (10001000, 12501000)
    >>> parse_window(":1845841947555").end
    Bound(ns=1845841947555, relative=False)
    """
    parts = str(text).split(":")
    if len(parts) != 2:
        raise ConfigError(f"bad {name} {text!r}: use START:END, absolute ns "
                          "(1845840947555:1845841947555) or relative to the "
                          "trace start with a unit (10ms:12ms)")
    bounds = []
    for part in parts:
        part = part.strip()
        if not part:
            bounds.append(None)
            continue
        m = _DURATION.fullmatch(part)
        if not m or (m.group(2) is None and not re.fullmatch(r"\d[\d_]*", part)):
            raise ConfigError(f"bad {name} bound {part!r}: an integer ns timestamp, or a "
                              "number with ns/us/ms/s")
        bound = Bound(parse_duration(part), m.group(2) is not None)
        if bound.ns < 0:
            raise ConfigError(f"bad {name} bound {part!r}: must be >= 0")
        bounds.append(bound)
    start, end = bounds
    if start and end and start.relative == end.relative and end.ns <= start.ns:
        raise ConfigError(f"empty {name} {text!r}: end <= start")
    return Window(start, end, str(text))
