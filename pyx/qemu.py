"""Real QEMU traces: read the log of QEMU's ``log`` trace backend and turn it
into a kvmscope trace (docs/qemu.md).

QEMU run with ``-msg timestamp=on -trace qemu_mutex_lock -trace
qemu_mutex_locked -trace qemu_mutex_unlock -trace kvm_run_exit -D FILE``
writes one line per event::

    13775@1796163602.964120:qemu_mutex_lock waiting on mutex 0x564a64325b40 (../../softmmu/physmem.c:2748)

(thread id, wall-clock seconds with microseconds, event, its arguments).
:func:`import_log` reads such a log in one pass and writes the trace: the
``locks`` table from the mutex events (the BQL recognised by its call sites,
see :func:`find_bql`), ``exits`` from ``kvm_run_exit`` (entry times from
``kvm_vcpu_ioctl`` ``KVM_RUN``), ``aio`` from ``thread_pool_submit`` and
``thread_pool_complete``, and ``threads`` with their roles inferred.

Pure Python with pyarrow and numpy: importing a log needs neither
``/dev/kvm`` nor the compiled core.
"""

import collections
import json
import os
import re

from . import __version__
from .errors import KvmscopeError
from .traceformat import (EXIT_REASONS, FORMAT_NAME, FORMAT_VERSION, META_FILE,
                          table_file, trace_files)

#: The events that carry lock acquisitions: without them there is no trace.
LOCK_EVENTS = ("qemu_mutex_lock", "qemu_mutex_locked", "qemu_mutex_unlock")
#: The event set of the requirement: locks and exits.
MINIMAL_EVENTS = LOCK_EVENTS + ("kvm_run_exit",)
#: What ``kvmscope qemu`` traces by default: also when each vCPU re-enters
#: the guest (``kvm_vcpu_ioctl``) and the thread pool's requests.
DEFAULT_EVENTS = MINIMAL_EVENTS + ("kvm_vcpu_ioctl", "thread_pool_submit",
                                   "thread_pool_complete")
#: Every event the importer reads (others are counted and skipped).
KNOWN_EVENTS = DEFAULT_EVENTS + ("thread_pool_cancel",)
#: Named event sets of ``kvmscope qemu --events``.
EVENT_SETS = {"minimal": MINIMAL_EVENTS, "default": DEFAULT_EVENTS}

#: ``ioctl(KVM_RUN)``: ``_IO(KVMIO, 0x80)``.
KVM_RUN = 0xAE80
#: The log backend prints gettimeofday(): microseconds.
RESOLUTION_NS = 1000
#: The clock of the log's timestamps.
CLOCK = {"name": "CLOCK_REALTIME", "source": "qemu-log", "resolution_ns": RESOLUTION_NS}

#: The trace-format lock name of QEMU's global mutex.
BQL = "bql"

# A trace line: TID@SECONDS.MICROSECONDS:EVENT ARGUMENTS
_LINE = re.compile(rb"(\d+)@(\d+)\.(\d{6}):([A-Za-z0-9_]+)(?: (.*))?\Z")
# The same line without `-msg timestamp=on`: the event and its arguments only.
_NO_TIMESTAMP = re.compile(rb"(?:\d+@)?([a-z][a-z0-9_]+) (waiting on|taken|released) mutex ")
_MUTEX = re.compile(rb"mutex (0x[0-9a-f]+|\(nil\)) \((.*):(\d+)\)\Z")
_CPU = re.compile(rb"cpu_index (-?\d+), (?:reason (\d+)|type (0x[0-9a-f]+))")
_POOL = re.compile(rb"(?:pool (\S+) )?req (\S+) opaque (\S+)(?: ret (-?\d+))?")

#: The thread pool's source file: its workers take the pool's lock there.
_POOL_FILE = "util/thread-pool.c"

#: Bytes of a log read to decide whether it is a QEMU trace log at all.
SNIFF_BYTES = 1 << 16

#: Where a path in a call site starts: QEMU's build directory is two levels
#: under the source tree (``../../softmmu/physmem.c``), headers one
#: (``./include/qemu/thread.h``).
_SITE_PREFIX = re.compile(r"^(?:\.\.?/)+")


class QemuLogError(KvmscopeError, ValueError):
    """A log that cannot be imported: the message is one line naming the file
    and what is wrong (and, for a log without lock events, the ``-trace``
    options that are needed)."""


def trace_options(events=DEFAULT_EVENTS, log=None):
    """The QEMU options that make it write a log :func:`import_log` reads.

    Parameters
    ----------
    events : sequence of str
        Trace events (default :data:`DEFAULT_EVENTS`).
    log : str, optional
        The ``-D`` file; omitted when None.

    Returns
    -------
    list of str

    Examples
    --------
    >>> " ".join(trace_options(MINIMAL_EVENTS, "q.log"))
    '-msg timestamp=on -trace qemu_mutex_lock -trace qemu_mutex_locked -trace qemu_mutex_unlock -trace kvm_run_exit -D q.log'
    """
    out = ["-msg", "timestamp=on"]
    for e in events:
        out += ["-trace", e]
    if log is not None:
        out += ["-D", log]
    return out


def site_name(path, line):
    """A call site as ``file:line`` relative to QEMU's source tree
    (``../../softmmu/physmem.c``, 2748 -> ``softmmu/physmem.c:2748``)."""
    return f"{_SITE_PREFIX.sub('', path)}:{line}"


def exit_reason(code):
    """The trace's name of KVM exit reason *code* (``unknown`` beyond the
    format's list)."""
    return EXIT_REASONS[code] if 0 <= code < len(EXIT_REASONS) else "unknown"


# --------------------------------------------------------------------------
# one pass over the log

class _Mutex:
    __slots__ = ("owner", "depth", "held", "last_release", "release_seq")

    def __init__(self):
        self.owner = None           # tid holding it
        self.depth = 0              # nested acquisitions of a recursive mutex
        self.held = None            # (request, acquired, site, contended, prev_owner, seq)
        self.last_release = -1      # tid that released it last (-1: none seen)
        self.release_seq = 0        # the line of that release


class _Thread:
    __slots__ = ("tid", "first", "cpu", "kvm_run", "sites", "open_exit", "submits",
                 "completes")

    def __init__(self, tid, first):
        self.tid = tid
        self.first = first              # line number of its first event
        self.cpu = None                 # cpu_index of kvm_run_exit / kvm_vcpu_ioctl
        self.kvm_run = False            # entered KVM_RUN
        self.sites = collections.Counter()   # acquisition call-site files
        self.open_exit = None           # row of its last exit, not yet re-entered
        self.submits = 0
        self.completes = 0


class LogData:
    """What one pass over a QEMU log found: rows of every table (tids and
    mutex addresses still raw) and what was skipped.  Built by
    :func:`read_log`; :func:`import_log` writes it as a trace."""

    def __init__(self, path):
        self.path = path
        self.lines = 0
        self.trace_lines = 0
        self.other_lines = 0            # not a trace line (another message in the log)
        self.unparsed = collections.Counter()   # known event, arguments not understood
        self.events = collections.Counter()
        self.unknown = collections.Counter()    # events the importer does not read
        self.truncated = False          # the log ends in the middle of a line
        self.first_ns = None
        self.last_ns = None
        self.clock_backwards = 0        # a thread's timestamp went back
        self.threads = {}
        self.mutexes = {}
        self.sites = {}                 # (path, line) as logged -> call-site name
        # locks: one tuple per acquisition (tid, addr, site, request, acquired,
        # released, prev_owner_tid, contended, seq)
        self.locks = []
        self.acq_sites = collections.Counter()      # (addr, site) -> acquisitions
        self.rel_sites = collections.Counter()      # (addr, site) -> releases
        self.anomalies = collections.Counter()
        # exits: [tid, cpu, reason, exit_ns, entry_ns]
        self.exits = []
        self.unknown_reasons = collections.Counter()
        # aio: (submit_tid, complete_tid, pool, submit_ns, complete_ns, ret, seq)
        self.aio = []
        self.pending_aio = {}
        self.cancelled = 0
        self.pending = {}               # (tid, addr) -> (request, site, held by another, seq)
        self.releases_on = False        # a qemu_mutex_unlock was seen (see _on_mutex)
        # request to acquisition of uncontended acquisitions: what writing the
        # `waiting on` line costs (the log backend's own cost per event)
        self.free_waits = 0
        self.free_count = 0
        # thread-pool jobs: (tid, mutex, start, done, seq); see _aio_stages
        self.jobs = []
        self.pool_release = {}


def _thread(data, tid):
    t = data.threads.get(tid)
    if t is None:
        t = data.threads[tid] = _Thread(tid, data.lines)
    return t


def _on_mutex(data, tid, ts, name, args, seq):
    m = _MUTEX.search(args)
    if m is None:
        data.unparsed[name] += 1
        return
    addr, path, line = m.groups()
    addr = addr.decode()
    site = data.sites.get((path, line))
    if site is None:
        site = data.sites[(path, line)] = site_name(path.decode("utf-8", "replace"), int(line))
    mx = data.mutexes.get(addr)
    if mx is None:
        mx = data.mutexes[addr] = _Mutex()
    th = _thread(data, tid)
    if name == "qemu_mutex_lock":
        job = data.pool_release.pop((tid, addr), None)
        if job is not None and site.startswith(_POOL_FILE + ":"):
            # a thread-pool worker asks for the pool's lock again: the
            # request it took at that release has run (see _aio_stages)
            data.jobs.append((tid, addr, job[0], ts, job[1]))
        pending = data.pending.get((tid, addr))
        if pending is not None:
            data.anomalies["request without acquisition"] += 1
        data.pending[(tid, addr)] = (ts, site, mx.owner not in (None, tid), seq)
    elif name == "qemu_mutex_locked":
        data.pool_release.pop((tid, addr), None)    # a condition wait ended
        req = data.pending.pop((tid, addr), None)
        if mx.owner == tid:
            if data.releases_on:        # a recursive mutex taken again
                mx.depth += 1
                data.anomalies["nested acquisition (recursive mutex)"] += 1
                return
            # releases are not traced yet (events switched on one by one from
            # the monitor): the previous acquisition's release is missing
            data.anomalies["acquired again before releases were traced"] += 1
        elif mx.owner is not None:      # the holder's release is not in the log
            data.anomalies["acquired while another thread held it"] += 1
        if req is None:
            # no request event: a trylock that succeeded, or the re-acquisition
            # at the end of a condition-variable wait (its wait is unknown)
            request, contended = ts, False
            data.anomalies["acquisition without a request (trylock or condition wait)"] += 1
        else:
            # contended: another thread held it when this one asked, or
            # released it after that (a holder logs `taken` only after it got
            # the mutex, so the log can show it free while it was not)
            request, site = req[0], req[1]
            contended = req[2] or (mx.release_seq > req[3] and mx.last_release not in (-1, tid))
            if not contended:
                data.free_waits += ts - request
                data.free_count += 1
        mx.owner, mx.depth = tid, 0
        mx.held = (request, ts, site, contended, mx.last_release, seq)
        th.sites[site.rsplit(":", 1)[0]] += 1
        data.acq_sites[(addr, site)] += 1
    else:                               # qemu_mutex_unlock
        data.releases_on = True
        data.rel_sites[(addr, site)] += 1
        if site.startswith(_POOL_FILE + ":"):
            data.pool_release[(tid, addr)] = (ts, seq)
        if mx.owner != tid:
            if mx.owner is None:
                # taken before the log starts: its acquisition is not in the
                # trace, so the next one has no previous owner either
                data.anomalies["release without an acquisition in the log"] += 1
            else:
                data.anomalies["released by a thread that did not hold it"] += 1
                mx.owner, mx.held = None, None
                mx.last_release, mx.release_seq = tid, seq
            return
        if mx.depth:
            mx.depth -= 1
            return
        request, acquired, asite, contended, prev, aseq = mx.held
        data.locks.append((tid, addr, asite, request, acquired, ts, prev, contended, aseq))
        mx.owner, mx.held, mx.last_release, mx.release_seq = None, None, tid, seq


def _on_cpu(data, tid, ts, name, args):
    m = _CPU.match(args)
    if m is None:
        data.unparsed[name] += 1
        return
    th = _thread(data, tid)
    cpu = int(m.group(1))
    if name == "kvm_run_exit":
        code = int(m.group(2))
        if not 0 <= code < len(EXIT_REASONS):
            data.unknown_reasons[code] += 1
        row = [tid, cpu, exit_reason(code), ts, None]
        data.exits.append(row)
        th.open_exit = row
        th.kvm_run = True
        th.cpu = cpu
    elif m.group(3) is not None and int(m.group(3), 16) == KVM_RUN:
        # only KVM_RUN: the main thread issues the other vCPU ioctls too
        th.kvm_run = True
        th.cpu = cpu
        if th.open_exit is not None:
            th.open_exit[4] = ts
            th.open_exit = None


def _on_pool(data, tid, ts, name, args, seq):
    m = _POOL.match(args)
    if m is None:
        data.unparsed[name] += 1
        return
    req = m.group(2).decode()
    th = _thread(data, tid)
    if name == "thread_pool_submit":
        th.submits += 1
        data.pending_aio[req] = (tid, ts, (m.group(1) or b"").decode(), seq)
    elif name == "thread_pool_complete":
        th.completes += 1
        sub = data.pending_aio.pop(req, None)
        if sub is None:
            data.anomalies["AIO completion without its submission in the log"] += 1
            return
        ret = int(m.group(4)) if m.group(4) is not None else 0
        data.aio.append((sub[0], tid, sub[2], sub[1], ts, ret, sub[3]))
    else:                               # thread_pool_cancel
        if data.pending_aio.pop(req, None) is not None:
            data.cancelled += 1


def _not_a_log(path, head):
    """QemuLogError for a file whose first bytes hold no trace line."""
    text = head.split(b"\n")
    for line in text[:200]:
        if _NO_TIMESTAMP.match(line.strip()):
            return QemuLogError(f"{path}: QEMU trace lines without timestamps: run QEMU with "
                                "-msg timestamp=on (and -trace ... -D FILE)")
    if b"\0" in head:
        what = "binary data"
    elif not head.strip():
        what = "an empty file"
    else:
        what = "no line of the form TID@SECONDS.MICROSECONDS:EVENT ARGUMENTS"
    return QemuLogError(f"{path}: not a QEMU trace log ({what}); record one with "
                        + " ".join(trace_options(MINIMAL_EVENTS, "FILE")))


def read_log(path, progress=None):
    """Read a QEMU trace log in one pass.

    Parameters
    ----------
    path : str
        The ``-D`` file of QEMU's ``log`` trace backend, run with
        ``-msg timestamp=on``; gzip-compressed or not.
    progress : callable, optional
        Called as ``progress(bytes_read, total_bytes)`` now and then.

    Returns
    -------
    LogData

    Raises
    ------
    QemuLogError
        The file cannot be read or is not a QEMU trace log.
    """
    import gzip
    import stat
    import zlib
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):     # never open a FIFO or a device
            raise QemuLogError(f"{path}: not a regular file")
        raw_file = open(path, "rb")
    except OSError as e:
        raise QemuLogError(f"{path}: cannot read: {e.strerror}") from None
    data = LogData(path)
    handlers_mutex = set(LOCK_EVENTS)
    handlers_cpu = {"kvm_run_exit", "kvm_vcpu_ioctl"}
    handlers_pool = {"thread_pool_submit", "thread_pool_complete", "thread_pool_cancel"}
    last_ts = {}
    match = _LINE.match
    total = st.st_size
    head = b""
    with raw_file:
        try:
            compressed = raw_file.read(2) == b"\x1f\x8b"
            raw_file.seek(0)
            # a gzip-compressed log (.log.gz) is read as it is
            f = gzip.GzipFile(fileobj=raw_file, mode="rb") if compressed else raw_file
            head = f.read(SNIFF_BYTES)
            if not any(match(line.rstrip(b"\r")) for line in head.split(b"\n")[:-1]):
                raise _not_a_log(path, head)    # before reading a large file line by line
            if compressed:
                raw_file.seek(0)
                f = gzip.GzipFile(fileobj=raw_file, mode="rb")
            else:
                f.seek(0)
            seq = 0
            done = 0
            for raw in f:
                done += len(raw)
                data.lines += 1
                if not raw.endswith(b"\n"):
                    data.truncated = True       # the last line, cut short
                    break
                line = raw.rstrip(b"\r\n")
                m = match(line)
                if m is None:
                    data.other_lines += 1
                    continue
                data.trace_lines += 1
                tid, sec, usec, name, args = m.groups()
                tid = int(tid)
                ts = int(sec) * 1_000_000_000 + int(usec) * 1000
                name = name.decode()
                if args is None:
                    args = b""
                prev = last_ts.get(tid)
                if prev is not None and ts < prev:
                    data.clock_backwards += 1
                last_ts[tid] = ts
                if data.first_ns is None or ts < data.first_ns:
                    data.first_ns = ts
                if data.last_ns is None or ts > data.last_ns:
                    data.last_ns = ts
                data.events[name] += 1
                seq += 1
                if name in handlers_mutex:
                    _on_mutex(data, tid, ts, name, args, seq)
                elif name in handlers_cpu:
                    _on_cpu(data, tid, ts, name, args)
                elif name in handlers_pool:
                    _on_pool(data, tid, ts, name, args, seq)
                else:
                    data.unknown[name] += 1
                    del data.events[name]
                    _thread(data, tid)
                if progress is not None and not seq & 0xFFFF:
                    progress(raw_file.tell() if compressed else done, total)
        except EOFError:
            data.truncated = True               # a gzip stream cut short
        except gzip.BadGzipFile as e:
            raise QemuLogError(f"{path}: corrupt gzip data: {e}") from None
        except OSError as e:
            raise QemuLogError(f"{path}: cannot read: {e.strerror or e}") from None
        except zlib.error as e:
            raise QemuLogError(f"{path}: corrupt gzip data: {e}") from None
    if data.trace_lines == 0:
        raise _not_a_log(path, head)
    open_locks = sum(1 for mx in data.mutexes.values() if mx.owner is not None)
    if open_locks:
        data.anomalies["held when the log ends (dropped)"] += open_locks
    waiting = len(data.pending)
    if waiting:
        data.anomalies["waiting when the log ends (dropped)"] += waiting
    if data.pending_aio:
        data.anomalies["AIO requests not completed when the log ends (dropped)"] += \
            len(data.pending_aio)
    return data


# --------------------------------------------------------------------------
# what the log says about QEMU: the BQL, the locks' names, the threads

#: Files whose acquisitions identify the BQL's takers (the callers of
#: qemu_mutex_lock_iothread()/bql_lock() that every QEMU has): the main loop
#: and the vCPU threads of the KVM accelerator.
BQL_TAKERS = ("util/main-loop.c", "accel/kvm/kvm-accel-ops.c", "accel/kvm/kvm-all.c")
#: The file of qemu_mutex_unlock_iothread()/bql_unlock(): every release of
#: the BQL names a line of it.
BQL_RELEASER = "cpus.c"


def find_bql(data):
    """The address of QEMU's global mutex in the log, and the rule that found it.

    QEMU takes the BQL through ``qemu_mutex_lock_iothread()`` (``bql_lock()``
    from QEMU 8.2), a macro that passes its caller's file and line on to the
    mutex trace events, and releases it through ``qemu_mutex_unlock_iothread()``
    (``bql_unlock()``), a function in ``softmmu/cpus.c`` (``system/cpus.c``)
    whose own line the ``qemu_mutex_unlock`` event names.  So the BQL is the
    mutex released most often at a line of ``cpus.c``; its acquisitions name
    the real call sites.  A log in which no mutex is released in ``cpus.c``
    falls back to the mutex taken most often in ``util/main-loop.c`` and the
    KVM accelerator (:data:`BQL_TAKERS`).

    Returns
    -------
    (str or None, str)
        The address (``0x...``), or None when no mutex matches; the rule.
    """
    released = collections.Counter()
    for (addr, site), n in data.rel_sites.items():
        if site.rsplit(":", 1)[0].endswith("/" + BQL_RELEASER) or \
                site.rsplit(":", 1)[0] == BQL_RELEASER:
            released[addr] += n
    if released:
        return released.most_common(1)[0][0], "released in cpus.c"
    taken = collections.Counter()
    for (addr, site), n in data.acq_sites.items():
        if site.rsplit(":", 1)[0] in BQL_TAKERS:
            taken[addr] += n
    if taken:
        return taken.most_common(1)[0][0], "taken in the main loop or the KVM accelerator"
    return None, "no mutex released in cpus.c or taken in the main loop"


def lock_names(data, bql):
    """Trace lock name per mutex address: ``bql``, else ``mutex@SITE`` after
    the call site that takes it most often (``mutex@util/rcu.c:359``), with
    ``#1``, ``#2``... in order of appearance when several mutexes share that
    site (instances of one structure).  Names, unlike addresses, stay the
    same from run to run, so traces of two runs can be compared."""
    by_site = collections.defaultdict(list)
    counts = collections.defaultdict(collections.Counter)
    for (addr, site), n in data.acq_sites.items():
        counts[addr][site] = n
    first = {}
    for row in data.locks:
        first.setdefault(row[1], row[8])
    for addr in sorted(counts, key=lambda a: first.get(a, 0)):
        if addr == bql:
            continue
        # most acquisitions; ties: the lowest site name, for stable names
        site = min(counts[addr].items(), key=lambda kv: (-kv[1], kv[0]))[0]
        by_site[site].append(addr)
    names = {bql: BQL} if bql is not None else {}
    for site, addrs in by_site.items():
        if len(addrs) == 1:
            names[addrs[0]] = f"mutex@{site}"
        else:
            for i, addr in enumerate(addrs, 1):
                names[addr] = f"mutex@{site}#{i}"
    return names


#: Acquisition-site file of QEMU's RCU thread.
_RCU_FILE = "util/rcu.c"


def thread_roles(data, bql):
    """Names and roles of the log's threads, in trace order.

    A thread that runs ``KVM_RUN`` (``kvm_run_exit``, ``kvm_vcpu_ioctl``) or
    takes the BQL in ``accel/kvm/kvm-accel-ops.c`` is a vCPU (``vcpuN``, N
    its cpu_index); the thread that takes the BQL in ``util/main-loop.c``
    (where the main loop dispatches fd handlers, timers and bottom halves) is
    ``main``; threads that take locks in ``util/thread-pool.c`` and are
    neither are thread-pool workers (``aioN``, role ``aio``); the thread that
    takes locks in ``util/rcu.c`` is ``rcu``; any other is
    ``thread-TID``.  Without a main-loop acquisition, the thread that
    completes thread-pool requests, else the first thread of the log, is
    ``main``.

    Returns
    -------
    list of (tid, name, role)
    """
    threads = sorted(data.threads.values(), key=lambda t: t.first)
    vcpus = [t for t in threads if t.kvm_run or t.cpu is not None
             or t.sites.get("accel/kvm/kvm-accel-ops.c")]
    rest = [t for t in threads if t not in vcpus]
    main = max(rest, key=lambda t: (t.sites.get("util/main-loop.c", 0), t.completes, -t.first),
               default=None)
    out = []
    if main is not None:
        out.append((main.tid, "main", "main"))
    used = set()
    for i, t in enumerate(sorted(vcpus, key=lambda t: (t.cpu is None, t.cpu or 0, t.first))):
        n = t.cpu if t.cpu is not None and t.cpu not in used else max(used | {-1}) + 1
        used.add(n)
        out.append((t.tid, f"vcpu{n}", "vcpu"))
    aio = 0
    for t in rest:
        if t is main:
            continue
        if t.sites.get(_POOL_FILE):
            out.append((t.tid, f"aio{aio}", "aio"))
            aio += 1
        elif t.sites.get(_RCU_FILE) and not any(n == "rcu" for _, n, _ in out):
            out.append((t.tid, "rcu", "other"))
        else:
            out.append((t.tid, f"thread-{t.tid}", "other"))
    return out


# --------------------------------------------------------------------------
# writing the trace

def _dict_column(values):
    import pyarrow as pa
    return pa.array(values, pa.string()).dictionary_encode().cast(
        pa.dictionary(pa.int32(), pa.string()))


def build_tables(data, bql=None):
    """The trace's Arrow tables from a :func:`read_log` result.

    Parameters
    ----------
    data : LogData
    bql : str, optional
        Address of the BQL (default: :func:`find_bql`).

    Returns
    -------
    (dict of str to pyarrow.Table, dict)
        Tables by name (every table of the format), and what the import
        decided (``bql``, ``bql_rule``, ``locks``: name -> address,
        ``threads``).
    """
    import numpy as np
    import pyarrow as pa
    from .traceformat import SCHEMAS, TABLES

    rule = "given"
    if bql is None:
        bql, rule = find_bql(data)
    elif bql not in data.mutexes:
        raise QemuLogError(f"{data.path}: no mutex {bql} in the log (--bql)")
    names = lock_names(data, bql)
    roles = thread_roles(data, bql)
    ids = {tid: i for i, (tid, _, _) in enumerate(roles)}

    def tids(values):
        return np.array([ids.get(t, -1) for t in values], dtype=np.int16)

    tables = {}
    tables["threads"] = pa.table({
        "thread": pa.array(np.arange(len(roles), dtype=np.int16)),
        "tid": pa.array([t for t, _, _ in roles], pa.int32()),
        "name": pa.array([n for _, n, _ in roles], pa.string()),
        "role": pa.array([r for _, _, r in roles], pa.string())}, schema=SCHEMAS["threads"])

    # locks in release order, as a recording writes them: per lock that is
    # also the order of acquisition, which the analysis keeps for the many
    # acquisitions that share a microsecond (it sorts stably)
    rows = data.locks
    if rows:
        cols = list(zip(*rows))
        prev = [ids.get(p, -1) if p != -1 else -1 for p in cols[6]]
        tables["locks"] = pa.table({
            "thread": pa.array(tids(cols[0])),
            "lock": _dict_column([names[a] for a in cols[1]]),
            "callsite": _dict_column(list(cols[2])),
            "request_ns": pa.array(cols[3], pa.int64()),
            "acquired_ns": pa.array(cols[4], pa.int64()),
            "released_ns": pa.array(cols[5], pa.int64()),
            "prev_owner": pa.array(np.array(prev, dtype=np.int16)),
            "contended": pa.array(cols[7], pa.bool_())}, schema=SCHEMAS["locks"])

    if data.exits:
        ex = sorted(data.exits, key=lambda r: r[3])
        cols = list(zip(*ex))
        n = len(ex)
        tables["exits"] = pa.table({
            "thread": pa.array(tids(cols[0])),
            "vcpu": pa.array(np.array(cols[1], dtype=np.int16)),
            "reason": _dict_column(list(cols[2])),
            "addr": pa.array(np.zeros(n, np.uint64)),
            "size": pa.array(np.zeros(n, np.uint8)),
            "is_write": pa.array(np.zeros(n, bool)),
            "data": pa.array(np.zeros(n, np.uint64)),
            "count": pa.array(np.ones(n, np.uint32)),
            "device": _dict_column([""] * n),
            "exit_ns": pa.array(cols[3], pa.int64()),
            "entry_ns": pa.array(list(cols[4]), pa.int64())}, schema=SCHEMAS["exits"])

    stages = "none"
    if data.aio:
        rows, stages = _aio_stages(data, {t for t, _, r in roles if r == "aio"})
        rows.sort(key=lambda r: r[3])
        cols = list(zip(*rows))
        n = len(rows)
        tables["aio"] = pa.table({
            "thread": pa.array(tids(cols[0])),
            "req": pa.array(np.arange(n, dtype=np.int64)),
            "op": _dict_column(["unknown"] * n),
            "offset": pa.array(np.zeros(n, np.int64)),
            "length": pa.array(np.zeros(n, np.int64)),
            "result": pa.array(cols[5], pa.int64()),
            "submit_thread": pa.array(tids(cols[1])),
            "submit_ns": pa.array(cols[3], pa.int64()),
            "start_ns": pa.array(cols[7], pa.int64()),
            "done_ns": pa.array(cols[8], pa.int64()),
            "complete_ns": pa.array(cols[4], pa.int64())}, schema=SCHEMAS["aio"])

    for name in TABLES:
        if name not in tables:
            tables[name] = SCHEMAS[name].empty_table()
    decided = {"bql": bql, "bql_rule": rule, "aio_stages": stages,
               "locks": {name: addr for addr, name in names.items()},
               "threads": [{"tid": t, "name": n, "role": r} for t, n, r in roles]}
    return tables, decided


def _aio_stages(data, workers):
    """AIO rows ``(worker, submitter, pool, submit, complete, ret, seq, start,
    done)`` and how their start and done times were found.

    The log names no worker: a worker of QEMU's thread pool takes a request
    from the queue with the pool's lock held, releases the lock, runs the
    request, and asks for the lock again.  So each release of that lock by a
    worker (a lock it took in ``util/thread-pool.c``) followed by a request
    for it is one request run, from the release to the request; requests
    leave the queue in the order they were submitted.  When a pool's runs
    pair up with its requests in that order, each starting between its
    request's submission and completion (``reconstructed``), the rows get
    the worker and these times (``done_ns`` capped at the completion: the
    worker marks the request done before it asks for the lock, so the
    completion may run first); otherwise (``submit and complete only``: no lock events
    of the workers, or runs that do not fit) ``start_ns`` is the submission,
    ``done_ns`` the completion, and ``thread`` the submitter.
    """
    by_pool = collections.defaultdict(list)
    for row in data.aio:
        by_pool[row[2]].append(row)
    jobs = collections.defaultdict(list)
    for job in data.jobs:
        if job[0] in workers:
            jobs[job[1]].append(job)
    out, how = [], set()
    for pool, reqs in by_pool.items():
        reqs.sort(key=lambda r: r[6])
        # the pool's lock is a member of its ThreadPool: just above its address
        try:
            base = int(pool, 16)
            near = [a for a in jobs if 0 <= int(a, 16) - base < 4096]
        except ValueError:
            near = []
        runs = sorted(jobs[min(near, key=lambda a: int(a, 16))], key=lambda j: j[4]) \
            if near else []
        # in submission order, each request takes the next run that starts
        # after it was submitted (earlier runs served requests submitted
        # before the log began) and before it completed
        paired, j = [], 0
        for r in reqs:
            while j < len(runs) and runs[j][2] < r[3]:
                j += 1
            if j == len(runs) or runs[j][2] > r[4]:
                paired = None
                break
            paired.append(runs[j])
            j += 1
        if not paired:
            how.add("submit and complete only")
            out += [(r[0], r[0]) + r[2:] + (r[3], r[4]) for r in reqs]
        else:
            how.add("reconstructed")
            # the I/O ended before the completion could run, and the worker
            # may ask for the lock only after that: done is capped there
            out += [(p[0], r[0]) + r[2:] + (p[2], min(p[3], r[4]))
                    for r, p in zip(reqs, paired)]
    # rows: (worker, submitter, pool, submit, complete, ret, seq, start, done)
    return out, " and ".join(sorted(how)) or "none"


def _write_tables(path, tables, compression):
    import pyarrow as pa
    import pyarrow.ipc as ipc
    from .traceformat import TABLES
    options = ipc.IpcWriteOptions(compression=compression)
    for name in TABLES:
        table = tables[name]
        target = os.path.join(path, table_file(name))
        with pa.OSFile(target, "wb") as f:
            with ipc.new_stream(f, table.schema, options=options) as w:
                if table.num_rows:
                    w.write_table(table)


def _meta(data, decided, tables, source):
    state = "running" if data.truncated else "complete"
    kernel = (source or {}).get("guest")
    meta = {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION,
        "kvmscope_version": __version__,
        "state": state,
        "clock": dict(CLOCK),
        "config": {"guest": kernel or "qemu", "source": "qemu-log"},
        **({"host": source["host"]} if (source or {}).get("host") else {}),
        "start_ns": data.first_ns, "end_ns": data.last_ns,
        "stop_reason": "end of the QEMU log" + (" (its last line was cut short)"
                                               if data.truncated else ""),
        "tables": {name: t.num_rows for name, t in tables.items()},
        "locks": sorted(decided["locks"]),
    }
    skipped = {
        "lines": data.lines, "trace_lines": data.trace_lines,
        "other_lines": data.other_lines,
        "truncated_last_line": data.truncated,
        "unknown_events": dict(data.unknown.most_common()),
        "unparsed_events": dict(data.unparsed.most_common()),
        "unknown_exit_reasons": {str(k): v for k, v in sorted(data.unknown_reasons.items())},
        "anomalies": dict(data.anomalies.most_common()),
        "clock_went_back": data.clock_backwards,
        "aio_cancelled": data.cancelled,
    }
    meta["qemu"] = {
        "source": "qemu-log",
        "log": data.path,
        "version": (source or {}).get("version") or "unknown",
        "command": (source or {}).get("command"),
        "events": dict(sorted(data.events.items())),
        "bql": decided["bql"], "bql_rule": decided["bql_rule"],
        "mutexes": decided["locks"],
        "threads": decided["threads"],
        "entry_times": "kvm_vcpu_ioctl" in data.events,
        # mean request-to-acquisition of uncontended acquisitions: the cost
        # of writing one trace line, which every wait and hold includes
        "line_cost_ns": round(data.free_waits / data.free_count) if data.free_count else None,
        "aio_stages": decided["aio_stages"],
        "import": skipped,
    }
    return meta


def check_output(path, force=False):
    """Refuse an output directory as ``kvmscope run -o`` does (see
    :func:`kvmscope.config.check_output`): missing, empty, or holding a trace
    that *force* allows to replace.  Removes nothing."""
    from .config import check_output as check
    check(path, force)


def _remove_old_trace(path):
    """The files of the trace in *path* (only those: ``--force``)."""
    for name in trace_files():
        file = os.path.join(path, name)
        if os.path.lexists(file) and not os.path.isdir(file):
            os.unlink(file)


def import_log(log, output, *, force=False, bql=None, source=None, compression=None,
               progress=None):
    """Convert a QEMU trace log into a kvmscope trace directory.

    Parameters
    ----------
    log : str
        The log (``-D`` file of QEMU's ``log`` trace backend).
    output : str
        Trace directory: missing, empty, or holding a trace (replaced only
        with *force*).
    force : bool
    bql : str, optional
        Address of QEMU's global mutex (``0x...``), when :func:`find_bql`
        cannot tell.
    source : dict, optional
        What is known of the run: ``version`` (QEMU's ``--version`` line),
        ``command`` (its argument list), ``guest`` (a name for the report).
    compression : {None, "lz4", "zstd"}
    progress : callable, optional
        ``progress(bytes_read, total_bytes)``.

    Returns
    -------
    dict
        The trace's ``meta.json``; ``meta["qemu"]["import"]`` says what was
        skipped.

    Raises
    ------
    QemuLogError
        Not a QEMU trace log, or no lock events in it.
    kvmscope.errors.ConfigError
        The output directory may not be written.

    Examples
    --------
    >>> meta = import_log("qemu.log", "traces/qemu-run")      # doctest: +SKIP
    >>> meta["qemu"]["bql"], meta["tables"]["locks"]          # doctest: +SKIP
    ('0x55f294c2db40', 40240)
    """
    check_output(output, force)         # before reading a possibly large log
    data = read_log(log, progress=progress)
    missing = [e for e in LOCK_EVENTS if not data.events.get(e)]
    if missing:
        have = ", ".join(sorted(data.events) + sorted(data.unknown)) or "none"
        raise QemuLogError(
            f"{log}: no {' or '.join(missing)} events (events in the log: {have}); "
            "run QEMU with " + " ".join(trace_options(MINIMAL_EVENTS)) + " -D FILE")
    tables, decided = build_tables(data, bql)
    check_output(output, force)
    if force and os.path.isdir(output):
        _remove_old_trace(output)
    os.makedirs(output, exist_ok=True)
    _write_tables(output, tables, compression)
    with open(os.path.join(output, "console.log"), "wb"):
        pass
    meta = _meta(data, decided, tables, source)
    from .tracewriter import write_json_atomic
    write_json_atomic(os.path.join(output, META_FILE), meta)
    return meta


def describe_import(meta):
    """Lines saying what an import kept and skipped (for the command line)."""
    q = meta["qemu"]
    imp = q["import"]
    t = meta["tables"]
    lines = [f"{meta['config']['guest']}: {imp['trace_lines']} trace lines -> "
             f"{t['locks']} lock acquisitions, {t['exits']} exits, {t['aio']} AIO requests, "
             f"{t['threads']} threads; BQL {q['bql'] or 'not found'} ({q['bql_rule']})"]
    if imp["unknown_events"]:
        ev = ", ".join(f"{k} {v}" for k, v in imp["unknown_events"].items())
        lines.append(f"skipped events the import does not read: {ev}")
    if imp["other_lines"]:
        lines.append(f"skipped {imp['other_lines']} lines that are not trace lines")
    if imp["unparsed_events"]:
        ev = ", ".join(f"{k} {v}" for k, v in imp["unparsed_events"].items())
        lines.append(f"skipped events whose arguments were not understood: {ev}")
    if imp["truncated_last_line"]:
        lines.append("the log's last line is cut short (QEMU killed, or the log still being "
                     "written): dropped; the trace counts as cut off there")
    if imp["clock_went_back"]:
        lines.append(f"a thread's wall-clock timestamps went back {imp['clock_went_back']} times "
                     "(the host's clock was set): figures around that are wrong")
    if not q["entry_times"] and t["exits"]:
        lines.append("no kvm_vcpu_ioctl events: exits have no entry times (-trace kvm_vcpu_ioctl)")
    return lines


def dumps_meta(meta):
    """meta.json as written (for tests and the command line's JSON output)."""
    return json.dumps(meta, indent=2)
