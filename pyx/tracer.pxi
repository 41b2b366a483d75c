# Per-thread trace rings (lock-free, written without the GIL) and their drain into numpy records.

RECORD_DTYPE = np.dtype({
    "names": ["type", "b0", "b1", "b2", "thread", "h0", "w0", "w1", "q0", "q1", "t0", "t1", "t2", "t3"],
    "formats": ["u1", "u1", "u1", "u1", "<u2", "<i2", "<u4", "<u4", "<u8", "<u8", "<i8", "<i8", "<i8", "<i8"],
    "offsets": [0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 40, 48, 56],
    "itemsize": 64,
})

cdef extern from "<stdlib.h>" nogil:
    int posix_memalign(void **memptr, size_t alignment, size_t size)


cdef class Tracer:
    """The set of per-thread trace rings of one run.

    Each traced thread owns one ring of fixed-size 64-byte records that only it
    writes; :meth:`drain` (called from one thread) moves every committed record
    out, converting timestamps to ``CLOCK_MONOTONIC`` nanoseconds.

    Parameters
    ----------
    capacity : int
        Records per ring, rounded up to a power of two.
    lossless : bool
        Block a thread whose ring is full until the drain makes room, instead
        of dropping (and counting) the record.
    enabled : bool
        False registers threads but gives them no ring: nothing is recorded.
    """
    cdef ks_ring *rings[KS_MAX_THREADS]
    cdef ks_thread *threads[KS_MAX_THREADS]
    cdef int nthreads
    cdef readonly uint64_t capacity
    cdef readonly bint lossless
    cdef readonly bint enabled
    cdef readonly list names
    cdef readonly list roles
    # end of the last drained record per ring (ns), for a gap that starts at a drain boundary
    cdef int64_t last_end_ns[KS_MAX_THREADS]
    cdef list _losses

    def __cinit__(self, capacity=1 << 16, lossless=False, enabled=True):
        cdef uint64_t cap = 64
        if capacity < 64 or capacity > (1 << 26):
            raise ValueError(f"ring capacity {capacity} out of range: use 64 .. {1 << 26} records")
        while cap < capacity:
            cap <<= 1
        self.capacity = cap
        self.lossless = lossless
        self.enabled = enabled
        self.nthreads = 0
        self.names = []
        self.roles = []
        self._losses = []
        cdef int i
        for i in range(KS_MAX_THREADS):
            self.last_end_ns[i] = INT64_MIN

    def __dealloc__(self):
        cdef int i
        for i in range(self.nthreads):
            if self.rings[i] != NULL:
                free(self.rings[i].buf)
                free(self.rings[i])
                self.rings[i] = NULL

    cdef int register(self, ks_thread *t, str name, str role) except -1:
        """Give ``t`` its id and, when recording, its ring."""
        cdef void *mem = NULL
        cdef ks_ring *ring = NULL
        if self.nthreads >= KS_MAX_THREADS:
            raise KvmscopeError(f"too many traced threads (max {KS_MAX_THREADS})")
        if self.enabled:
            if posix_memalign(&mem, 64, sizeof(ks_ring)) != 0:
                raise MemoryError()
            ring = <ks_ring *>mem
            memset(ring, 0, sizeof(ks_ring))
            if posix_memalign(&mem, 64, self.capacity * sizeof(ks_record)) != 0:
                free(ring)
                raise MemoryError()
            ring.buf = <ks_record *>mem
            # touch every page now, not on the first exits of the run
            memset(ring.buf, 0, self.capacity * sizeof(ks_record))
            ring.mask = self.capacity - 1
            ring.lossless = self.lossless
        t.id = self.nthreads
        t.ring = ring
        self.rings[self.nthreads] = ring
        self.threads[self.nthreads] = t
        self.nthreads += 1
        self.names.append(name)
        self.roles.append(role)
        return 0

    def threads_info(self):
        """List of ``(thread, tid, name, role)`` for every registered thread."""
        return [(i, self.threads[i].tid, self.names[i], self.roles[i]) for i in range(self.nthreads)]

    def cpu_stats(self):
        """Per thread name, what the kernel accounted to the thread between
        the start and the end of its work (``threadcpu.pxi``): ``cpu_ns``,
        ``runq_ns`` (runnable, waiting for a CPU), ``slices`` (times given a
        CPU), ``voluntary`` and ``involuntary`` context switches (None where
        the kernel does not say).  Threads that never started or have not
        ended are left out."""
        out = {}
        cdef int i
        cdef ks_thread *t
        for i in range(self.nthreads):
            t = self.threads[i]
            if t.cpu.state != 2:
                continue
            out[self.names[i]] = {k: (int(t.cpu.v[j]) if t.cpu.v[j] >= 0 else None)
                                  for j, k in enumerate(CPU_FIELDS)}
        return out

    def cpu_begin(self, name):
        """The calling thread starts the work of the registered thread *name*
        (the drain: the Python thread that moves the records)."""
        cdef ks_thread *t = self.threads[self._index(name)]
        with nogil:
            cpustat__begin(t)

    def cpu_end(self, name):
        """The calling thread ends the work of the registered thread *name*."""
        cdef ks_thread *t = self.threads[self._index(name)]
        with nogil:
            cpustat__end(t)

    def _index(self, name):
        try:
            return self.names.index(name)
        except ValueError:
            raise ValueError(f"no thread {name!r}; threads are {', '.join(self.names)}") from None

    def counts(self):
        """Per thread name: records ``written``, ``lost`` and lossless ``stalls``."""
        out = {}
        cdef int i
        for i in range(self.nthreads):
            if self.rings[i] == NULL:
                out[self.names[i]] = {"written": 0, "lost": 0, "stalls": 0}
            else:
                out[self.names[i]] = {
                    "written": ks_load_relaxed_u64(&self.rings[i].written),
                    "lost": ks_load_relaxed_u64(&self.rings[i].lost),
                    "stalls": ks_load_relaxed_u64(&self.rings[i].stalls),
                }
        return out

    def drain(self):
        """Move all committed records out of the rings.

        Gaps left by dropped records are collected on the way; read them with
        :meth:`take_losses`.

        Returns
        -------
        numpy.ndarray
            Records of :data:`RECORD_DTYPE`; ``t0``..``t3`` converted to
            nanoseconds, missing timestamps as ``INT64_MIN``.
        """
        cdef uint64_t pending = 0, n, got = 0, i
        cdef uint64_t first_seq[KS_MAX_THREADS]
        cdef uint64_t offset[KS_MAX_THREADS]
        cdef uint64_t count[KS_MAX_THREADS]
        cdef int k
        cdef ks_ring *r
        cdef ks_gap gap
        for k in range(self.nthreads):
            r = self.rings[k]
            if r != NULL:
                pending += ks_ring_pending(r)
        out = np.empty(pending, dtype=RECORD_DTYPE)
        cdef ks_record *buf = <ks_record *><size_t>out.ctypes.data if pending else NULL
        with nogil:
            for k in range(self.nthreads):
                r = self.rings[k]
                count[k] = 0
                if r != NULL:
                    first_seq[k] = r.tail
                    offset[k] = got
                    if got < pending:
                        count[k] = ks_ring_pop(r, buf + got, pending - got)
                        got += count[k]
            for i in range(got):
                buf[i].t0 = ks_raw_to_ns(&g_clock, buf[i].t0)
                buf[i].t1 = ks_raw_to_ns(&g_clock, buf[i].t1)
                buf[i].t2 = ks_raw_to_ns(&g_clock, buf[i].t2)
                buf[i].t3 = ks_raw_to_ns(&g_clock, buf[i].t3)
        for k in range(self.nthreads):
            r = self.rings[k]
            if r == NULL:
                continue
            # a gap before record `seq` lies between records seq-1 and seq
            while ks_ring_next_gap(r, first_seq[k] + count[k], &gap):
                if gap.seq > first_seq[k]:
                    after = _record_end(&buf[offset[k] + gap.seq - first_seq[k] - 1])
                else:
                    after = self.last_end_ns[k]
                if gap.seq < first_seq[k]:      # cannot happen (logged before its record commits)
                    gap.seq = first_seq[k]
                before = _record_start(&buf[offset[k] + gap.seq - first_seq[k]]) if count[k] else INT64_MIN
                self._losses.append((k, gap.lost, None if after == INT64_MIN else after,
                                     None if before == INT64_MIN else before))
            if count[k]:
                self.last_end_ns[k] = _record_end(&buf[offset[k] + count[k] - 1])
        return out[:got]

    def take_losses(self, bint final=False):
        """Gaps found by :meth:`drain` since the last call: ``(thread, lost, after_ns, before_ns)``.

        With ``final`` (every producer has exited), records dropped after a
        thread's last record are reported too, with ``before_ns`` None.
        """
        cdef int k
        cdef ks_ring *r
        if final:
            for k in range(self.nthreads):
                r = self.rings[k]
                if r != NULL and r.unlogged_lost:
                    after = self.last_end_ns[k]
                    self._losses.append((k, r.unlogged_lost, None if after == INT64_MIN else after, None))
                    r.unlogged_lost = 0
        out, self._losses = self._losses, []
        return out

    def abandon(self):
        """Stop every lossless wait for good: full rings drop (and count) from now on."""
        cdef int k
        for k in range(self.nthreads):
            if self.rings[k] != NULL:
                ks_ring_abandon(self.rings[k])


cdef inline int64_t _record_start(const ks_record *r) noexcept nogil:
    """Earliest timestamp of a drained record (INT64_MIN: none)."""
    cdef int64_t v = INT64_MAX
    if r.t0 != INT64_MIN and r.t0 < v: v = r.t0
    if r.t1 != INT64_MIN and r.t1 < v: v = r.t1
    if r.t2 != INT64_MIN and r.t2 < v: v = r.t2
    if r.t3 != INT64_MIN and r.t3 < v: v = r.t3
    return INT64_MIN if v == INT64_MAX else v


cdef inline int64_t _record_end(const ks_record *r) noexcept nogil:
    """Latest timestamp of a drained record (INT64_MIN: none)."""
    cdef int64_t v = INT64_MIN
    if r.t0 > v: v = r.t0
    if r.t1 > v: v = r.t1
    if r.t2 > v: v = r.t2
    if r.t3 > v: v = r.t3
    return v
