# Schedule replay: real threads run per-thread schedules (busy time, then the BQL
# at a call site, held busy for a set time) through the instrumented lock, without KVM.

cdef struct ks_sched:
    ks_thread t
    ks_lock *lock
    int64_t n
    const int64_t *gap_raw       # busy (or sleep) time before each request
    const int64_t *hold_raw      # time the lock is held once acquired
    const uint32_t *site         # call site of each acquisition
    int sleep_gaps               # the main loop sleeps in poll: sleep most of a long gap
    int64_t sleep_slack_raw
    int *go
    pthread_t pthread


cdef inline void sched__busy_until(int64_t until) noexcept nogil:
    while ks_now() < until:
        ks_cpu_relax()


cdef void *sched__main(void *arg) noexcept nogil:
    cdef ks_sched *s = <ks_sched *>arg
    cdef int64_t i, start, gap, acq
    cdef double ns_per_raw = 1.0 / raw_per_ns_c()
    cdef timespec ts
    s.t.tid = ks_gettid()
    while not ks_load_acquire_int(s.go):
        ks_cpu_relax()
    cpustat__begin(&s.t)
    start = ks_now()
    for i in range(s.n):
        gap = s.gap_raw[i]
        if s.sleep_gaps and gap > 2 * s.sleep_slack_raw:
            # wake a little early and spin the rest: a sleep overshoots
            ts.tv_sec = 0
            ts.tv_nsec = <long>((gap - s.sleep_slack_raw) * ns_per_raw)
            while ts.tv_nsec >= 1000000000:
                ts.tv_sec += 1
                ts.tv_nsec -= 1000000000
            nanosleep(&ts, NULL)
        sched__busy_until(start + gap)
        lock_acquire(s.lock, &s.t, s.site[i])
        acq = s.lock.cur_acquired
        if acq == 0:
            acq = ks_now()
        sched__busy_until(acq + s.hold_raw[i])
        lock_release(s.lock, &s.t)
        start = ks_now()
    cpustat__end(&s.t)
    return NULL


cdef class ScheduleRun:
    """Per-thread schedules run on real threads through the instrumented BQL.

    Each thread repeats: busy time (guest time of a vCPU; the main loop
    sleeps most of a long one, as it does in poll), then takes the BQL at a
    call site and holds it busy for a set time.  Every acquisition is
    recorded by the lock into the thread's ring of *tracer*, as in a run.

    Parameters
    ----------
    tracer : Tracer
        Rings for the threads, registered in the order of *threads*.
    threads : list of tuple
        ``(name, role, gap_ns, hold_ns, callsite)`` per thread: three equal
        length arrays (int64 ns, int64 ns, call site ids).
    """
    cdef ks_lock lock
    cdef ks_sched *s
    cdef int n
    cdef int go
    cdef Tracer tracer
    cdef list _keep
    cdef bint ran

    def __cinit__(self, Tracer tracer, list threads):
        cdef int i
        cdef double rpn = raw_per_ns_c()
        cdef int64_t[::1] gap, hold
        cdef uint32_t[::1] site
        self.n = len(threads)
        self.s = <ks_sched *>calloc(max(self.n, 1), sizeof(ks_sched))
        if self.s == NULL:
            raise MemoryError()
        lock_init(&self.lock, 0)
        self.go = 0
        self.tracer = tracer
        self._keep = []
        for i, (name, role, g, h, c) in enumerate(threads):
            g = np.ascontiguousarray(np.round(np.asarray(g, dtype=np.float64) * rpn), dtype=np.int64)
            h = np.ascontiguousarray(np.round(np.asarray(h, dtype=np.float64) * rpn), dtype=np.int64)
            c = np.ascontiguousarray(c, dtype=np.uint32)
            if not (len(g) == len(h) == len(c)):
                raise ValueError(f"thread {name}: schedule arrays of unequal lengths")
            if len(c) and int(c.max()) >= KS_MAX_CALLSITES:
                raise ValueError(f"thread {name}: call site id out of range")
            self._keep.extend((g, h, c))
            gap, hold, site = g, h, c
            tracer.register(&self.s[i].t, name, role)
            self.s[i].lock = &self.lock
            self.s[i].n = len(c)
            self.s[i].gap_raw = &gap[0] if len(c) else NULL
            self.s[i].hold_raw = &hold[0] if len(c) else NULL
            self.s[i].site = &site[0] if len(c) else NULL
            self.s[i].sleep_gaps = role == "main"
            self.s[i].sleep_slack_raw = <int64_t>(60000 * rpn)
            self.s[i].go = &self.go

    def __dealloc__(self):
        if self.s != NULL:
            free(self.s)
        pthread_mutex_destroy(&self.lock.mutex)

    def run(self):
        """Start every thread at once and wait for all to finish their schedule.

        Returns
        -------
        tuple
            ``(start_ns, end_ns)`` on the run clock.
        """
        cdef int i, rc, started = 0
        cdef int64_t t0, t1
        if self.ran:
            raise KvmscopeError("a schedule runs once")
        self.ran = True
        try:
            for i in range(self.n):
                rc = pthread_create(&self.s[i].pthread, NULL, sched__main, &self.s[i])
                if rc != 0:
                    raise_errno(f"pthread_create {self.tracer.names[i]}", rc)
                started += 1
        finally:
            t0 = ks_now()
            ks_store_release_int(&self.go, 1)
            with nogil:
                for i in range(started):
                    pthread_join(self.s[i].pthread, NULL)
                t1 = ks_now()
        return ks_raw_to_ns(&g_clock, t0), ks_raw_to_ns(&g_clock, t1)

    def stats(self):
        """Per thread: ``acquisitions``, ``contended`` and ``wait_ns`` as the lock counted them."""
        cdef int i
        cdef double ns_per_raw = 1.0 / raw_per_ns_c()
        return [{"acquisitions": self.s[i].t.lock_acquisitions,
                 "contended": self.s[i].t.lock_contended,
                 "wait_ns": round(self.s[i].t.lock_wait_raw * ns_per_raw)} for i in range(self.n)]
