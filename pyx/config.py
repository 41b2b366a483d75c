"""What defines a recording (``RunConfig``), the valid range of every setting,
and the checks that refuse a bad one before anything starts: no value reaches
the core, the guest's parameter block or ``/dev/kvm`` unchecked."""
import dataclasses
import json
import os

from . import board, guests, units
from .errors import ConfigError

#: Core limits (``KS_MAX_VCPUS``, ``KS_MAX_AIO`` in pyx/core_types.pxd).
MAX_VCPUS = 64
MAX_AIO_THREADS = 16
U32_MAX = 2 ** 32 - 1
U64_MAX = 2 ** 64 - 1


@dataclasses.dataclass(frozen=True)
class Setting:
    """The valid range of one numeric :class:`RunConfig` field and the option that
    sets it.

    ``kind`` is ``count`` (an integer), ``size`` (bytes; text takes K, M, G, T) or
    ``duration`` (text takes ns, us, ms, s, min, h). A duration's range is in ns;
    ``unit`` is the unit of the field's value and of a bare number.
    """

    field: str
    option: str
    low: int
    high: int
    kind: str = "count"
    unit: str = ""
    multiple: int = 1
    why: str = ""

    def describe(self):
        """The range as text: ``1 .. 64``, ``1M .. 3G, a multiple of 4K``."""
        show = {"size": units.format_size,
                "duration": lambda ns: units.format_duration(ns, sep="", exact=True)}.get(self.kind, str)
        text = f"{show(self.low)} .. {show(self.high)}"
        if self.kind == "duration" and self.multiple > 1 and self.multiple == units.NS_PER[self.unit]:
            text += f", whole {self.unit}"
        elif self.multiple > 1:
            text += f", a multiple of {show(self.multiple)}"
        return text

    def parse(self, value, shown=None):
        """*value* (a number in the field's unit, or text with a unit) as the
        field's value, checked against the range.

        Raises
        ------
        ConfigError
            Not a number of this kind, or out of range; the message names the
            option and the range.
        """
        shown = value if shown is None else shown
        if self.kind == "count":
            number = _integer(value, self.option)
        elif self.kind == "size":
            number = units.parse_size(value, self.option)
        else:
            number = units.parse_duration(value, self.unit, self.option)
        if not self.low <= number <= self.high or number % self.multiple:
            raise ConfigError(f"{self.option} {shown} out of range: use {self.describe()}"
                              + (f" ({self.why})" if self.why else ""))
        if self.kind != "duration":
            return number
        scale = units.NS_PER[self.unit]
        return number / scale if self.unit == "s" else number // scale


def _integer(value, option):
    if isinstance(value, bool):
        raise ConfigError(f"bad integer {value!r} for {option}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    try:
        return int(str(value).strip(), 10)
    except ValueError:
        raise ConfigError(f"bad integer {value!r} for {option}") from None


_MS, _S = units.NS_PER["ms"], units.NS_PER["s"]

#: Every numeric setting of a recording, by RunConfig field.
SETTINGS = {s.field: s for s in (
    Setting("vcpus", "--vcpus", 1, MAX_VCPUS),
    Setting("iterations", "--iterations", 0, U32_MAX, why="guests count in 32 bits"),
    Setting("seed", "--seed", 0, U64_MAX),
    Setting("memory", "--memory", 1 << 20, board.RAM_MAX, "size", multiple=4096,
            why="guest RAM ends below the device window at 0xd0000000"),
    Setting("duration", "--duration", _MS, 168 * 3600 * _S, "duration", "s"),
    Setting("ring_records", "--ring", 64, 1 << 26),
    Setting("aio_threads", "--aio-threads", 1, MAX_AIO_THREADS),
    Setting("disk_size", "--disk-size", 4096, 1 << 40, "size", multiple=board.BLK_SECTOR_SIZE),
    Setting("timer_period_us", "--timer-period", 50 * 1000, 60 * _S, "duration", "us", multiple=1000),
    Setting("port_burst", "--port-burst", 0, U32_MAX),
    Setting("inject_hold", "--inject-hold", 0, _S, "duration", "ns"),
)}

CHOICES = {"clock": ("auto", "tsc", "monotonic"), "irqchip": ("kernel", "user"),
           "compression": (None, "lz4", "zstd")}


@dataclasses.dataclass
class RunConfig:
    """Everything that defines a recording; stored in the trace's meta.json.

    Numbers are in the units of the field names; ``memory``, ``disk_size``,
    ``duration``, ``timer_period_us`` and the ``inject_hold`` values may also be
    given as text with a unit (``"16M"``, ``"2s"``, ``"1ms"``, ``"2us"``), which
    :meth:`validate` converts. The ranges are in :data:`SETTINGS`.

    Examples
    --------
    >>> c = RunConfig("pio-storm", duration="2s", memory="32M", trace=False)
    >>> c.validate().name, c.duration, c.memory
    ('pio-storm', 2.0, 33554432)
    >>> try:
    ...     RunConfig(vcpus=100, trace=False).validate()
    ... except ValueError as e:
    ...     print(e)
    --vcpus 100 out of range: use 1 .. 64
    """

    guest: str = "pio-storm"
    vcpus: int = 1
    iterations: int = None
    seed: int = 1
    memory: int = 16 << 20
    duration: float = None          # seconds
    output: str = None              # trace directory; None with trace=False
    trace: bool = True
    lossless: bool = False
    ring_records: int = 1 << 16
    clock: str = "auto"
    kvm_device: str = "/dev/kvm"
    console: bool = True            # echo the guest console to stdout
    inject_hold: dict = dataclasses.field(default_factory=dict)   # callsite -> ns
    lockless: tuple = ()
    irqchip: str = "kernel"         # or "user": KVM_INTERRUPT from userspace
    aio_threads: int = 2
    disk: str = None                # disk image; None: a temporary one
    disk_size: int = 1 << 20        # bytes, when the image is created
    timer_period_us: int = None     # timer guests (default per guest)
    port_burst: int = 8             # mixed: port writes per block request
    compression: str = "zstd"       # the streams' Arrow IPC buffer compression: None, "lz4" or "zstd"
    force: bool = False             # replace the trace already in ``output``

    def validate(self):
        """Check every field, fill in the per-guest defaults and convert values
        given with units; returns the :class:`~kvmscope.guests.Guest`.

        Raises
        ------
        ConfigError
            A ``ValueError`` whose one-line message names the option and its
            valid range; also for an ``output`` that may not be written (see
            :func:`check_output`).
        """
        try:
            g = guests.get(self.guest)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.iterations is None:
            self.iterations = g.default_iterations
        if self.timer_period_us is None:
            self.timer_period_us = 2000 if self.guest == "mixed" else 1000
        for name, setting in SETTINGS.items():
            value = getattr(self, name)
            if name == "inject_hold":
                self.inject_hold = {_callsite(c): setting.parse(ns, f"{c}={ns}") for c, ns in value.items()}
            elif value is not None or name != "duration":
                setattr(self, name, setting.parse(value))
        if self.memory < g.min_memory:
            raise ConfigError(f"--memory {units.format_size(self.memory)} is too small for {g.name}: "
                              f"it needs at least {units.format_size(g.min_memory)}")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"--{name} {getattr(self, name)}: use "
                                  + " or ".join(a or "none" for a in allowed))
        self.lockless = tuple(self.lockless)
        if self.trace:
            if not self.output:
                raise ConfigError("no trace directory given: use -o DIR, or --no-trace")
            if getattr(self, "_prepared_output", None) != os.path.abspath(self.output):
                check_output(self.output, self.force)
        return g


def _callsite(name):
    if not isinstance(name, str) or not name:
        raise ConfigError(f"--inject-hold {name!r}: use CALLSITE=DURATION, e.g. pio:debugport=2us")
    return name


def holds_trace(path):
    """Whether directory *path* holds a kvmscope trace: a ``meta.json`` whose
    ``format`` is ``kvmscope-trace`` (complete or not)."""
    from .traceformat import FORMAT_NAME, META_FILE
    try:
        with open(os.path.join(path, META_FILE)) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT_NAME


def check_output(path, force=False):
    """Refuse a trace directory that a recording may not write.

    A missing or empty directory is fine. A directory holding a kvmscope trace
    needs *force* (and then only that trace's files are replaced). Anything else
    is refused, even with *force*: a regular file, or a non-empty directory
    that holds no trace, whose files kvmscope never deletes.

    Raises
    ------
    ConfigError
        With a one-line message saying why and what to do.
    """
    if not os.path.lexists(path):
        return
    if not os.path.isdir(path):
        raise ConfigError(f"-o {path}: exists and is not a directory")
    if not os.listdir(path):
        return
    if holds_trace(path):
        if not force:
            raise ConfigError(f"{path} already holds a trace: use --force to replace it")
        return
    raise ConfigError(f"-o {path}: directory is not empty and holds no kvmscope trace "
                      "(--force replaces only a trace): choose another directory")


def prepare_output(config):
    """Make ``config.output`` ready for a new recording: check it again and, with
    ``config.force``, delete the old trace's own files (only the names of
    ``kvmscope.traceformat.trace_files()``: nothing else in the directory).

    Call it after :meth:`RunConfig.validate` and before the first file is
    written; calling it again for the same directory does nothing.

    Returns
    -------
    list of str
        The file names removed.

    Raises
    ------
    ConfigError
        As :func:`check_output`.
    """
    if not config.trace or not config.output:
        return []
    path = os.path.abspath(config.output)
    if getattr(config, "_prepared_output", None) == path:
        return []
    check_output(config.output, config.force)
    removed = []
    if config.force and os.path.isdir(path):
        from .traceformat import trace_files
        for name in trace_files():
            file = os.path.join(path, name)
            if os.path.lexists(file) and not os.path.isdir(file):
                os.unlink(file)
                removed.append(name)
    # validate() may run again (record() calls it): what is left is no trace now
    config._prepared_output = path
    return removed
