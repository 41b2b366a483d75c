"""Run a real QEMU with its mutex and KVM events traced, then import the log
(``kvmscope qemu``; docs/qemu.md).  Also the guests for QEMU
(``pyx/guests/qemu``), the command lines that boot them, and a probe of
whether QEMU can run here.

Pure Python: needs a ``qemu-system-x86_64`` and ``/dev/kvm`` only to run
QEMU, never the compiled core.
"""

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading

from . import qemu
from .errors import ConfigError

#: The QEMU that ``kvmscope qemu --guest`` and the probe run by default.
DEFAULT_QEMU = "qemu-system-x86_64"
#: ``-cpu`` of the command lines kvmscope composes: the host's CPU without
#: IA32_ARCH_CAPABILITIES (MSR 0x10a), which some hosts (nested KVM) do not
#: let QEMU set: plain ``-cpu host`` then aborts at start.
DEFAULT_CPU = "host,-arch-capabilities"
#: QEMU's message when it cannot set that MSR.
MSR_10A = "failed to set MSR 0x10a"

GUEST_DIR = os.path.join(os.path.dirname(__file__), "guests", "qemu")
#: Disk image size of each vCPU's IDE disk (mixed): its region is 2048 sectors.
DISK_SIZE = 1 << 20


@dataclasses.dataclass(frozen=True)
class QemuGuest:
    """A guest program for QEMU's pc machine (a multiboot ELF kernel)."""

    name: str
    summary: str
    default_iterations: int
    max_vcpus: int = 8              # MAX_VCPUS in qemu.inc
    disks: int = 0                  # IDE disks it uses: one per vCPU, up to this many

    @property
    def path(self):
        return os.path.join(GUEST_DIR, self.name + ".elf")

    def check(self):
        """The kernel's path; ConfigError when it was not assembled."""
        if not os.path.isfile(self.path):
            raise ConfigError(f"guest kernel {self.path} is missing: reinstall kvmscope "
                              "(pip install .) so that the guests are assembled")
        return self.path


GUESTS = {g.name: g for g in [
    QemuGuest("pio-storm", "each vCPU writes the debug port (0x80) n times, then finishes: "
                           "kvmscope's pio-storm", 100000),
    QemuGuest("mixed", "each vCPU (at most 2) makes n random 1-4 sector DMA requests on its own IDE "
                       "disk and writes the debug port burst= times after each; vCPU 0 takes the "
                       "RTC's 512 Hz interrupt: kvmscope's mixed", 200, max_vcpus=2, disks=2),
]}


def get_guest(name):
    """A guest for QEMU by name; ConfigError listing the known ones."""
    try:
        return GUESTS[name]
    except KeyError:
        raise ConfigError(f"unknown QEMU guest {name!r}; guests for QEMU: "
                          f"{', '.join(GUESTS)}") from None


def firmware(qemu_binary=DEFAULT_QEMU):
    """Path of qboot (QEMU's minimal firmware, which boots a multiboot kernel
    in a fraction of SeaBIOS's time), or None when QEMU has none."""
    exe = shutil.which(qemu_binary) or qemu_binary
    dirs = [os.path.join(os.path.dirname(os.path.realpath(exe)), "..", "share", "qemu"),
            "/usr/share/qemu", "/usr/local/share/qemu"]
    for d in dirs:
        path = os.path.normpath(os.path.join(d, "qboot.rom"))
        if os.path.isfile(path):
            return path
    return None


def guest_command(name, vcpus=1, iterations=None, seed=1, port_burst=8, qemu_binary=DEFAULT_QEMU,
                  cpu=DEFAULT_CPU, disks=()):
    """The QEMU command line that runs a guest for QEMU.

    Parameters
    ----------
    name : str
        A guest of :data:`GUESTS`.
    vcpus, iterations, seed, port_burst : int
        ``-smp`` and the kernel command line (``n=``, ``seed=``, ``burst=``).
    qemu_binary, cpu : str
    disks : sequence of str
        Raw images of the guest's IDE disks (``mixed``: one per vCPU).

    Returns
    -------
    list of str

    Examples
    --------
    >>> guest_command("pio-storm", 2, 1000)[:6]
    ['qemu-system-x86_64', '-accel', 'kvm', '-cpu', 'host,-arch-capabilities', '-smp']
    """
    g = get_guest(name)
    n = g.default_iterations if iterations is None else iterations
    cmd = [qemu_binary, "-accel", "kvm", "-cpu", cpu, "-smp", str(vcpus), "-m", "64M",
           "-nodefaults", "-display", "none", "-no-reboot", "-device", "isa-debug-exit"]
    fw = firmware(qemu_binary)
    if fw:
        cmd += ["-bios", fw]
    cmd += ["-kernel", g.path, "-append", f"n={n} seed={seed} burst={port_burst}"]
    for i, disk in enumerate(disks):
        cmd += ["-drive", f"file={disk},format=raw,if=ide,index={2 * i}"]    # one per channel
    return cmd


def qemu_version(qemu_binary=DEFAULT_QEMU):
    """The first line of ``QEMU --version``; ConfigError when it cannot run."""
    try:
        out = subprocess.run([qemu_binary, "--version"], capture_output=True, text=True,
                             timeout=30, errors="replace")
    except FileNotFoundError:
        raise ConfigError(f"{qemu_binary}: not found (Debian: apt-get install qemu-system-x86)") \
            from None
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ConfigError(f"{qemu_binary}: cannot run: {e}") from None
    line = (out.stdout or out.stderr).strip().splitlines()
    if out.returncode != 0 or not line:
        raise ConfigError(f"{qemu_binary} --version failed (exit status {out.returncode})")
    return line[0]


def trace_events(qemu_binary=DEFAULT_QEMU):
    """The trace events compiled into this QEMU (``-trace help``)."""
    try:
        out = subprocess.run([qemu_binary, "-trace", "help"], capture_output=True, text=True,
                             timeout=30, errors="replace")
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ConfigError(f"{qemu_binary} -trace help: {e}") from None
    return {line.strip() for line in out.stdout.splitlines() if line.strip()}


def parse_events(text):
    """Event names from ``--events``: comma-separated event names and the
    sets ``minimal`` and ``default`` (:data:`kvmscope.qemu.EVENT_SETS`)."""
    events = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        for e in qemu.EVENT_SETS.get(part, (part,)):
            if not all(c.isalnum() or c in "_*" for c in e):
                raise ConfigError(f"--events: {e!r} is not a trace event name")
            if e not in events:
                events.append(e)
    if not events:
        raise ConfigError("--events: no event given")
    return events


def check_events(events, available, qemu_binary):
    """The requested events this QEMU has; ConfigError when a mutex event
    is not compiled in.  Returns (events, missing)."""
    missing = [e for e in events if "*" not in e and e not in available]
    locks = [e for e in qemu.LOCK_EVENTS if e in missing or e not in events]
    if locks:
        what = "not compiled into" if any(e in missing for e in locks) else "not requested from"
        raise ConfigError(f"the lock events {', '.join(locks)} are {what} {qemu_binary}: "
                          "kvmscope needs qemu_mutex_lock, qemu_mutex_locked and qemu_mutex_unlock")
    return [e for e in events if e not in missing], missing


def check_command(command):
    """Refuse a QEMU command line kvmscope cannot add its options to."""
    if not command:
        raise ConfigError("no QEMU command: kvmscope qemu -o TRACE -- qemu-system-x86_64 ARGS...")
    for arg in command[1:]:
        if arg == "-D" or arg.startswith("-D") and len(arg) > 2 and not arg.startswith("-D-"):
            raise ConfigError("the QEMU command sets -D: kvmscope chooses the log file itself "
                              "(--log FILE keeps it)")


@dataclasses.dataclass
class QemuRun:
    """What :func:`run` did: QEMU's exit status, the trace's meta.json, lines to show."""

    command: list
    returncode: int
    stopped: bool                   # kvmscope stopped QEMU (--duration)
    interrupted: bool
    meta: dict
    guest_status: int = None        # what an isa-debug-exit guest reported
    messages: list = dataclasses.field(default_factory=list)


def _relay(stream, keep):
    """Copy QEMU's stderr to ours, keeping the lines (to recognise a failure)."""
    for line in iter(stream.readline, b""):
        keep.append(line.decode("utf-8", "replace").rstrip("\n"))
        del keep[:-200]
        try:
            sys.stderr.write(line.decode("utf-8", "replace"))
            sys.stderr.flush()
        except (OSError, ValueError):
            pass


def run(command, output, *, events=qemu.DEFAULT_EVENTS, force=False, log=None, duration=None,
        guest=None, compression=None, check=True):
    """Run QEMU with its trace events on, then import its log.

    Parameters
    ----------
    command : list of str
        The QEMU command line (binary first); kvmscope adds ``-msg
        timestamp=on``, one ``-trace`` per event and ``-D LOG``.
    output : str
        Trace directory (as ``kvmscope run -o``).
    events : sequence of str
        Trace events; the mutex events are required.
    force : bool
        Replace the trace in *output*.
    log : str, optional
        Keep QEMU's log in this file (default: a temporary file, removed).
    duration : float, optional
        Seconds after which QEMU is asked to quit (SIGTERM: it stops
        cleanly and its log is complete).
    guest : str, optional
        A name for the report (default: the ``-kernel``'s file name).
    compression : {None, "lz4", "zstd"}
    check : bool
        Ask QEMU first which events it has (``-trace help``).

    Returns
    -------
    QemuRun

    Raises
    ------
    kvmscope.errors.ConfigError
        A bad command, output directory or event set; QEMU cannot start.
    kvmscope.qemu.QemuLogError
        QEMU wrote no usable log.
    """
    check_command(command)
    qemu.check_output(output, force)
    binary = command[0]
    version = qemu_version(binary)
    messages = []
    if check:
        events, missing = check_events(list(events), trace_events(binary), binary)
        if missing:
            messages.append(f"not compiled into this QEMU, not traced: {', '.join(missing)}")
    if guest is None:
        kernel = _option(command, "-kernel")
        guest = os.path.splitext(os.path.basename(kernel))[0] if kernel else "qemu"
    own_log = log is None
    if own_log:
        fd, log = tempfile.mkstemp(prefix="kvmscope-qemu-", suffix=".log")
        os.close(fd)
    full = list(command) + qemu.trace_options(events, log)
    stderr_lines = []
    stopped = interrupted = False
    try:
        try:
            # stdin and stdout stay the terminal's (a guest console, -nographic);
            # stderr is relayed, to recognise a failure
            proc = subprocess.Popen(full, stderr=subprocess.PIPE)
        except OSError as e:
            raise ConfigError(f"{binary}: cannot run: {e.strerror}") from None
        relay = threading.Thread(target=_relay, args=(proc.stderr, stderr_lines), daemon=True)
        relay.start()
        try:
            try:
                proc.wait(timeout=duration)
            except subprocess.TimeoutExpired:
                stopped = True
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        except KeyboardInterrupt:
            # QEMU got the terminal's SIGINT too: it quits cleanly
            interrupted = True
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        relay.join(timeout=5)
        code = proc.returncode
        text = "\n".join(stderr_lines)
        if MSR_10A in text:
            raise ConfigError(f"{binary} aborted: KVM on this host cannot set MSR 0x10a "
                              "(IA32_ARCH_CAPABILITIES): use -cpu host,-arch-capabilities")
        if not os.path.getsize(log):
            why = stderr_lines[-1].strip() if stderr_lines else f"exit status {code}"
            raise ConfigError(f"{binary} wrote no trace log ({why})")
        source = {"version": version, "command": full, "guest": guest, "host": _host()}
        meta = qemu.import_log(log, output, force=force, source=source, compression=compression)
    finally:
        if own_log:
            try:
                os.unlink(log)
            except OSError:
                pass
    result = QemuRun(full, code, stopped, interrupted, meta, messages=messages)
    if "isa-debug-exit" in " ".join(command) and code is not None and code % 2 == 1:
        result.guest_status = code >> 1
    return result


def _host():
    import platform
    import socket
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), "")
    except OSError:
        pass
    return {"hostname": socket.gethostname(), "kernel": platform.release(),
            "machine": platform.machine(), "cpu": cpu, "cpus": os.cpu_count()}


def _option(command, name):
    """The value of QEMU option *name* in *command* (``-kernel FILE``)."""
    for i, arg in enumerate(command[:-1]):
        if arg in (name, "-" + name):
            return command[i + 1]
    return None


def make_disks(count, directory):
    """*count* zeroed raw images of :data:`DISK_SIZE` in *directory*."""
    paths = []
    for i in range(count):
        path = os.path.join(directory, f"disk{i}.img")
        with open(path, "wb") as f:
            f.truncate(DISK_SIZE)
        paths.append(path)
    return paths


def probe(qemu_binary=DEFAULT_QEMU, timeout=60):
    """Whether QEMU can run a traced guest here: ``(True, version)`` or
    ``(False, reason)``.  Boots pio-storm for one iteration with the mutex
    events on and checks the log (used by the test suite's ``qemu`` marker).
    """
    if shutil.which(qemu_binary) is None:
        return False, f"{qemu_binary} not found (Debian: apt-get install qemu-system-x86)"
    try:
        version = qemu_version(qemu_binary)
        fd = os.open("/dev/kvm", os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        os.close(fd)
    except ConfigError as e:
        return False, str(e)
    except OSError as e:
        return False, f"/dev/kvm cannot be opened ({e.strerror}): QEMU cannot use KVM"
    g = GUESTS["pio-storm"]
    if not os.path.isfile(g.path):
        return False, f"{g.path} is missing: the guests for QEMU are not assembled"
    with tempfile.TemporaryDirectory(prefix="kvmscope-qemu-probe-") as tmp:
        log = os.path.join(tmp, "probe.log")
        cmd = guest_command("pio-storm", 1, 1, qemu_binary=qemu_binary) \
            + qemu.trace_options(qemu.MINIMAL_EVENTS, log)
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                 errors="replace", stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as e:
            return False, f"{qemu_binary} did not run the probe guest: {e}"
        if out.returncode != 1:
            last = (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
            return False, f"{qemu_binary} cannot run a KVM guest here: {last}"
        try:
            with open(log, "rb") as f:
                head = f.read(1 << 16)
        except OSError:
            head = b""
        if b":qemu_mutex_locked " not in head:
            return False, (f"{qemu_binary} wrote no qemu_mutex_locked events: its build lacks "
                           "the log trace backend or the mutex events")
    return True, version
