# The re-execution model's schedules on real threads, without KVM: vCPU streams whose
# causal links (interrupts, AIO, timers, bottom halves) go through the core's own main
# loop, timers, bottom halves, AIO pool queue and instrumented BQL.

cdef extern from "<sched.h>" nogil:
    int sched_yield()

cdef enum:
    RP_MAX_VEC = 8
    RP_GATE_START = 0
    RP_GATE_COMPUTE = 1
    RP_GATE_WAIT = 2
    RP_FX_SUBMIT = 0
    RP_FX_ARM_REL = 1
    RP_FX_ARM_GRID = 2
    RP_FX_DEL = 3
    RP_FX_RAISE = 4
    RP_FX_BH = 5
    RP_FX_IRQROW = 6
    RP_FX_KINDS = 7

# One exit of a stream (all int64: the layout of EXIT_DTYPE in core_replay); times in
# clock units.
cdef struct rp_exit:
    int64_t gate
    int64_t gap
    int64_t gvec
    int64_t gcnt
    int64_t cs
    int64_t pre
    int64_t hold
    int64_t post
    int64_t dur
    int64_t wvec
    int64_t wcnt
    int64_t wpre
    int64_t wake
    int64_t react
    int64_t last
    int64_t fx0
    int64_t nfx
    int64_t reason
    int64_t size
    int64_t is_write
    int64_t count
    int64_t device
    int64_t addr
    int64_t data
    int64_t defer                   # an ISR exit: taken after this program exit (-1: at once)

# An effect of a handler: at `off` into the critical section (or the exit without the BQL).
cdef struct rp_fx:
    int64_t off
    int64_t kind
    int64_t a
    int64_t b
    int64_t c

cdef struct rp_aio_spec:
    int64_t op
    int64_t offset
    int64_t length
    int64_t result
    int64_t io
    int64_t to_raise
    int64_t after_raise

cdef struct rp_vcpu:
    ks_thread t
    void *run
    int index
    int64_t n
    rp_exit *prog
    rp_exit *isr[RP_MAX_VEC]
    int64_t nisr[RP_MAX_VEC]
    int64_t isr_next[RP_MAX_VEC]
    pthread_mutex_t mu
    pthread_cond_t cond
    int64_t cnt[RP_MAX_VEC]         # interrupts received, per vector (under mu)
    int64_t isr_done[RP_MAX_VEC]    # of them, answered by an ISR exit
    int isr_raised                  # interrupts of ISR vectors received (atomic)
    int isr_handled
    int64_t j                       # the next program exit
    int64_t isr_block               # ISRs wait for the program exit of this index
    int sleeping
    int done
    int in_guest                    # in guest time or waiting in the guest (atomic)
    int64_t wait_vec                # what a blocked vCPU waits for (the watchdog's message)
    int64_t wait_need
    int64_t halt_poll               # KVM's adaptive halt-polling window, now
    int64_t exits
    pthread_t pthread
    int started

cdef struct rp_timer:
    void *run
    ks_timer *timer
    int vcpu
    int vec
    const int64_t *cb
    const int64_t *roff
    int64_t ncb
    int64_t k

cdef struct rp_bh:
    void *run
    ks_bh *bh
    const int64_t *dur
    int64_t n
    int64_t k

cdef struct rp_req:
    ks_aio_req req                  # first: aio_complete_all frees the request's address
    void *run
    int64_t spec

cdef struct rp_worker:
    void *run
    int index

cdef struct rp_run:
    ks_machine *m
    int nv
    rp_vcpu *v
    const rp_fx *fx
    int64_t nfx
    rp_timer *timers
    int ntimers
    const rp_aio_spec *aio
    int64_t naio
    rp_bh *bhs
    int nbhs
    int aio_vec
    int32_t vectors[RP_MAX_VEC]
    int32_t lines[KS_MAX_VCPUS][RP_MAX_VEC]
    int stop
    int go
    int64_t t0
    int64_t end                     # the last vCPU's end
    int64_t halt_poll_max           # KVM's halt_poll_ns (0: a halt sleeps at once)
    int irqchip_user                # a raise for a vCPU in the guest records a kick
    int running
    pthread_mutex_t done_mu
    rp_worker workers[KS_MAX_AIO]


cdef inline int rp__busy(rp_run *r, int64_t until) noexcept nogil:
    """Busy until ``until``; 1 when the run stops first."""
    while ks_now() < until:
        if ks_load_acquire_int(&r.stop):
            return 1
        ks_cpu_relax()
    return 0


cdef inline void rp__spin(int64_t until) noexcept nogil:
    while ks_now() < until:
        ks_cpu_relax()


cdef void rp__raise(rp_run *r, ks_thread *self, int vi, int vec) noexcept nogil:
    """Interrupt ``vec`` (index into r.vectors) for vCPU ``vi``, from any thread."""
    cdef rp_vcpu *v
    if vi < 0 or vi >= r.nv or vec < 0 or vec >= RP_MAX_VEC:
        return
    trace_irq(self.ring, self.id, KS_IRQEV_RAISE, r.lines[vi][vec], r.vectors[vec], <int16_t>vi,
              ks_now())
    v = &r.v[vi]
    if r.irqchip_user and self != &v.t and ks_load_acquire_int(&v.in_guest):
        # the userspace irqchip kicks a vCPU out of the guest to inject
        trace_irq(self.ring, self.id, KS_IRQEV_KICK, -1, r.vectors[vec], <int16_t>vi, ks_now())
    pthread_mutex_lock(&v.mu)
    if not v.done:
        v.cnt[vec] += 1
        if v.nisr[vec] > 0:
            ks_store_release_int(&v.isr_raised, v.isr_raised + 1)
        if v.sleeping:
            pthread_cond_signal(&v.cond)
    pthread_mutex_unlock(&v.mu)


# ---- main-loop side: timer callbacks, bottom halves, AIO completions, the workers -----

cdef void rp__timer_cb(void *opaque) noexcept nogil:
    cdef rp_timer *tm = <rp_timer *>opaque
    cdef rp_run *r = <rp_run *>tm.run
    cdef int64_t k = tm.k % tm.ncb, t0 = ks_now(), off
    tm.k += 1
    off = tm.roff[k] if tm.roff[k] < tm.cb[k] else tm.cb[k]
    if tm.vec >= 0:
        rp__spin(t0 + off)
        rp__raise(r, &r.m.loop.thr, tm.vcpu, tm.vec)
    rp__spin(t0 + tm.cb[k])


cdef void rp__bh_cb(void *opaque) noexcept nogil:
    cdef rp_bh *b = <rp_bh *>opaque
    cdef int64_t t0 = ks_now()
    if b.n > 0:
        rp__spin(t0 + b.dur[b.k % b.n])
        b.k += 1


cdef void rp__aio_complete(ks_aio_req *req) noexcept nogil:
    """A request's completion in the main loop: its recorded time to the interrupt, the
    interrupt to the submitting vCPU, the time after it."""
    cdef rp_req *q = <rp_req *>req
    cdef rp_run *r = <rp_run *>q.run
    cdef const rp_aio_spec *s = &r.aio[q.spec]
    cdef int64_t t0 = ks_now()
    rp__spin(t0 + s.to_raise)
    t0 = ks_now()
    if r.aio_vec >= 0:
        # the recorded time after the raise includes the raise's own cost
        rp__raise(r, &r.m.loop.thr, req.vcpu, r.aio_vec)
    rp__spin(t0 + s.after_raise)


cdef void *rp__worker(void *arg) noexcept nogil:
    """An AIO worker on the pool's queue: the recorded service time, busy, in place of
    the file I/O; then the done list and the eventfd, as aio.pxi's workers."""
    cdef rp_worker *w = <rp_worker *>arg
    cdef rp_run *r = <rp_run *>w.run
    cdef ks_aio_pool *p = r.m.aio
    cdef ks_thread *self = &p.thr[w.index]
    cdef ks_aio_req *req
    cdef rp_req *q
    cdef uint64_t one = 1
    cdef sigset_t mask
    sigfillset(&mask)
    pthread_sigmask(SIG_SETMASK, &mask, NULL)
    self.tid = ks_gettid()
    cpustat__begin(self)
    while True:
        pthread_mutex_lock(&p.mutex)
        while p.q_head == NULL and not p.stop:
            pthread_cond_wait(&p.cond, &p.mutex)
        req = p.q_head
        if req == NULL:
            pthread_mutex_unlock(&p.mutex)
            break
        p.q_head = req.next
        if p.q_head == NULL:
            p.q_tail = NULL
        req.start_raw = ks_now()
        pthread_mutex_unlock(&p.mutex)
        req.worker_thread = self.id
        q = <rp_req *>req
        rp__spin(req.start_raw + r.aio[q.spec].io)
        req.result = r.aio[q.spec].result
        req.done_raw = ks_now()
        pthread_mutex_lock(&p.mutex)
        req.next = p.done_head
        p.done_head = req
        pthread_mutex_unlock(&p.mutex)
        write(p.efd, &one, 8)
    cpustat__end(self)
    return NULL


# ---- vCPU side ----------------------------------------------------------------------------

cdef void rp__fx(rp_run *r, rp_vcpu *v, const rp_fx *f) noexcept nogil:
    cdef rp_req *q
    cdef ks_timer *t
    cdef int64_t now, expire, per
    if f.kind == RP_FX_SUBMIT:
        q = <rp_req *>calloc(1, sizeof(rp_req))
        if q == NULL:
            return
        q.run = r
        q.spec = f.a
        q.req.op = <uint8_t>r.aio[f.a].op
        q.req.fd = -1
        q.req.offset = r.aio[f.a].offset
        q.req.length = r.aio[f.a].length
        q.req.complete = rp__aio_complete
        q.req.opaque = r
        q.req.vcpu = v.index
        aio_submit(r.m.aio, &q.req, &v.t)
    elif f.kind == RP_FX_ARM_REL:
        t = r.timers[f.a].timer
        timer_mod_locked(t, ks_now() + f.b)
    elif f.kind == RP_FX_ARM_GRID:
        t = r.timers[f.a].timer
        per = f.b
        now = ks_now()
        expire = t.expire_raw + per
        if expire < now:
            # fell behind by more than a period: skip ahead, as the timer device does
            expire += ((now - expire) // per + 1) * per
        timer_mod_locked(t, expire)
    elif f.kind == RP_FX_DEL:
        timer_del_locked(r.timers[f.a].timer)
    elif f.kind == RP_FX_RAISE:
        rp__raise(r, &v.t, v.index, <int>f.a)
    elif f.kind == RP_FX_BH:
        bh_schedule(r.bhs[f.a].bh, &v.t)
    elif f.kind == RP_FX_IRQROW:
        trace_irq(v.t.ring, v.t.id, <uint8_t>f.a, <int32_t>f.b, <int32_t>f.c, <int16_t>v.index,
                  ks_now())


cdef int rp__wait(rp_run *r, rp_vcpu *v, int vec, int64_t need, bint isr, bint poll) noexcept nogil:
    """Block until the vCPU has received ``need`` interrupts of ``vec`` (with ``isr``, an
    interrupt service routine's interrupt is answered meanwhile); 1 when the run stops.
    With ``poll``, a guest halted in KVM: first KVM's adaptive halt polling (a wake-up
    within the window costs the raiser no scheduler wake-up), then sleep."""
    cdef int ok
    cdef int64_t t0, until, waited, val
    while True:
        t0 = ks_now()
        if poll and v.halt_poll > 0:
            until = t0 + v.halt_poll
            while ks_now() < until:
                if <int64_t>ks_load_acquire_u64(<uint64_t *>&v.cnt[vec]) >= need \
                        or ks_load_acquire_int(&r.stop) \
                        or (isr and ks_load_acquire_int(&v.isr_raised) != v.isr_handled
                            and v.isr_block != v.j):
                    break
                # KVM stops polling when another thread wants the CPU
                sched_yield()
        pthread_mutex_lock(&v.mu)
        v.wait_vec = vec
        v.wait_need = need
        while v.cnt[vec] < need and not ks_load_acquire_int(&r.stop) and \
                not (isr and v.isr_raised != v.isr_handled and v.isr_block != v.j):
            v.sleeping = 1
            pthread_cond_wait(&v.cond, &v.mu)
        v.sleeping = 0
        v.wait_vec = -1
        ok = v.cnt[vec] >= need
        pthread_mutex_unlock(&v.mu)
        if poll and r.halt_poll_max > 0:
            # KVM's rule: grow the window after a short halt, shrink it after a long one
            waited = ks_now() - t0
            if waited <= v.halt_poll:
                pass
            elif v.halt_poll and waited > r.halt_poll_max:
                v.halt_poll //= 2
            elif v.halt_poll < r.halt_poll_max and waited < r.halt_poll_max:
                val = v.halt_poll * 2
                if val < r.halt_poll_max // 20:
                    val = r.halt_poll_max // 20
                v.halt_poll = val if val < r.halt_poll_max else r.halt_poll_max
        if ks_load_acquire_int(&r.stop):
            return 1
        if ok:
            return 0
        if rp__isr(r, v):
            return 1


cdef int rp__exit(rp_run *r, rp_vcpu *v, const rp_exit *e, int64_t x, int64_t base) noexcept nogil:
    """Handle exit ``e`` that happened at ``x``: exit handling, the BQL at its call site
    held for its hold with its effects at their offsets; recorded as an exit.  A halt
    waits for interrupt ``base + e.wcnt`` of its vector.  1: stopped."""
    cdef ks_exit ex
    cdef int64_t acq, i, entry
    cdef int stopped = 0
    cdef const rp_fx *f
    ks_store_release_int(&v.in_guest, 0)
    memset(&ex, 0, sizeof(ex))
    ex.vcpu = <int16_t>v.index
    ex.reason = <uint8_t>e.reason
    ex.size = <uint8_t>e.size
    ex.is_write = <uint8_t>e.is_write
    ex.count = <uint32_t>e.count
    ex.device = <uint32_t>e.device
    ex.addr = <uint64_t>e.addr
    ex.data = <uint64_t>e.data
    ex.exit_time = x
    v.exits += 1
    if e.cs >= 0:
        stopped = rp__busy(r, x + e.pre)
        lock_acquire(&r.m.bql, &v.t, <uint32_t>e.cs)
        acq = r.m.bql.cur_acquired
        if acq == 0:
            acq = ks_now()
        for i in range(e.nfx):
            f = &r.fx[e.fx0 + i]
            stopped |= rp__busy(r, acq + f.off)
            rp__fx(r, v, f)
        stopped |= rp__busy(r, acq + e.hold)
        lock_release(&r.m.bql, &v.t)
        stopped |= rp__busy(r, ks_now() + e.post)
    else:
        i = 0
        if e.wvec >= 0:
            # a halt in userspace: what comes before it, the wait for the interrupt,
            # the recorded wake-up; what the handler did after the wake comes after it
            while i < e.nfx and r.fx[e.fx0 + i].off <= e.wpre:
                f = &r.fx[e.fx0 + i]
                stopped |= rp__busy(r, x + f.off)
                rp__fx(r, v, f)
                i += 1
            stopped |= rp__busy(r, x + e.wpre)
            if not stopped:
                stopped = rp__wait(r, v, <int>e.wvec, base + e.wcnt, False, False)
            stopped |= rp__busy(r, ks_now() + e.wake)
        while i < e.nfx:
            f = &r.fx[e.fx0 + i]
            stopped |= rp__busy(r, x + f.off)
            rp__fx(r, v, f)
            i += 1
        if e.wvec < 0:
            stopped |= rp__busy(r, x + e.dur)
    entry = ks_now()
    trace_exit(v.t.ring, v.t.id, &ex, 0 if e.last else entry)
    return stopped


cdef int rp__isr(rp_run *r, rp_vcpu *v) noexcept nogil:
    """Answer one received interrupt of a vector with ISR exits: its reaction time, then
    the vector's next ISR exit (cycling through the recorded ones)."""
    cdef int vec, found = -1
    cdef int64_t base = 0
    cdef const rp_exit *e
    pthread_mutex_lock(&v.mu)
    for vec in range(RP_MAX_VEC):
        if v.nisr[vec] > 0 and v.cnt[vec] > v.isr_done[vec]:
            found = vec
            break
    if found >= 0:
        e = &v.isr[found][v.isr_next[found] % v.nisr[found]]
        if v.isr_next[found] < v.nisr[found] and e.defer == v.j:
            # recorded taken only after the coming program exit: wait for it
            v.isr_block = v.j
            pthread_mutex_unlock(&v.mu)
            return 0
        v.isr_done[found] += 1
        if e.wvec >= 0:
            base = v.cnt[e.wvec]
    if found < 0:
        # nothing left to answer: in step with the interrupts received
        v.isr_handled = ks_load_acquire_int(&v.isr_raised)
        pthread_mutex_unlock(&v.mu)
        return 0
    pthread_mutex_unlock(&v.mu)
    v.isr_handled += 1
    v.isr_next[found] += 1
    if rp__busy(r, ks_now() + e.react):
        return 1
    if rp__exit(r, v, e, ks_now(), base):
        return 1
    ks_store_release_int(&v.in_guest, 1)
    return 0


cdef int rp__compute(rp_run *r, rp_vcpu *v, int64_t left) noexcept nogil:
    """Guest time: busy, preempted by the ISR exits of interrupts that arrive."""
    cdef int64_t until, now
    while True:
        until = ks_now() + left
        while True:
            now = ks_now()
            if now >= until:
                return 0
            if ks_load_acquire_int(&r.stop):
                return 1
            if ks_load_acquire_int(&v.isr_raised) != v.isr_handled and v.isr_block != v.j:
                break
            ks_cpu_relax()
        left = until - now
        if rp__isr(r, v):
            return 1


cdef void *rp__vcpu_main(void *arg) noexcept nogil:
    cdef rp_vcpu *v = <rp_vcpu *>arg
    cdef rp_run *r = <rp_run *>v.run
    cdef const rp_exit *e
    cdef int64_t j, k
    cdef int64_t snap[RP_MAX_VEC]
    cdef int64_t prev[RP_MAX_VEC]
    cdef int stopped = 0
    v.t.tid = ks_gettid()
    memset(snap, 0, sizeof(snap))
    while not ks_load_acquire_int(&r.go):
        ks_cpu_relax()
    cpustat__begin(&v.t)
    v.isr_block = -1
    for j in range(v.n):
        e = &v.prog[j]
        v.j = j
        ks_store_release_int(&v.in_guest, 1)
        if e.gate == RP_GATE_START:
            stopped = rp__busy(r, r.t0 + e.gap)
        elif e.gate == RP_GATE_WAIT:
            stopped = rp__wait(r, v, <int>e.gvec, snap[e.gvec] + e.gcnt, True, True)
            if not stopped:
                stopped = rp__compute(r, v, e.gap)
        else:
            stopped = rp__compute(r, v, e.gap)
        if stopped:
            break
        # interrupts a gate or a halt waits for are counted from the previous program exit
        memcpy(prev, snap, sizeof(snap))
        pthread_mutex_lock(&v.mu)
        for k in range(RP_MAX_VEC):
            snap[k] = v.cnt[k]
        pthread_mutex_unlock(&v.mu)
        if rp__exit(r, v, e, ks_now(), prev[e.wvec] if e.wvec >= 0 else 0):
            break
    cpustat__end(&v.t)
    pthread_mutex_lock(&v.mu)
    v.done = 1
    pthread_mutex_unlock(&v.mu)
    pthread_mutex_lock(&r.done_mu)
    r.running -= 1
    if r.running == 0:
        r.end = ks_now()
    pthread_mutex_unlock(&r.done_mu)
    return NULL


EXIT_FIELDS = ("gate", "gap", "gvec", "gcnt", "cs", "pre", "hold", "post", "dur", "wvec", "wcnt",
               "wpre", "wake", "react", "last", "fx0", "nfx", "reason", "size", "is_write",
               "count", "device", "addr", "data", "defer")
FX_FIELDS = ("off", "kind", "a", "b", "c")
AIO_FIELDS = ("op", "offset", "length", "result", "io", "to_raise", "after_raise")


cdef class ModelRun:
    """The re-execution model's schedules on real threads through the core's main loop,
    timers, bottom halves, AIO pool and instrumented BQL, without KVM.

    Built by :mod:`kvmscope.core_replay`, which explains the arguments; every time is in
    run-clock units, every array int64 (structured arrays of ``EXIT_FIELDS``,
    ``FX_FIELDS``, ``AIO_FIELDS``).  Every index is checked here before a thread starts.
    """
    cdef rp_run r
    cdef Tracer tracer
    cdef list _keep
    cdef list vcpu_names
    cdef bint ran
    cdef bint ready
    cdef int nworkers
    cdef ks_thread drain_thr

    def __cinit__(self, Tracer tracer, list vcpus, fx, aio, list timers, list bhs, list vectors,
                  lines, int aio_vec, int nworkers, int dispatch_cs, int ncallsites,
                  int64_t dispatch_add_raw, int64_t halt_poll_raw=0, bint irqchip_user=False):
        cdef int i, k, nv = len(vcpus)
        cdef int64_t j, n, nfx, naio
        cdef int nvec, ntm, nbh
        cdef const int64_t[:, ::1] fv
        cdef const int64_t[:, ::1] av
        cdef const int64_t[::1] a1, a2
        cdef ks_machine *m
        memset(&self.r, 0, sizeof(rp_run))
        self._keep = []
        self.tracer = tracer
        self.ready = False
        if nv < 1 or nv > KS_MAX_VCPUS:
            raise ValueError(f"{nv} vCPUs out of range: use 1 .. {KS_MAX_VCPUS}")
        if nworkers < 1 or nworkers > KS_MAX_AIO:
            raise ValueError(f"{nworkers} AIO threads out of range: use 1 .. {KS_MAX_AIO}")
        if len(vectors) > RP_MAX_VEC:
            raise ValueError(f"{len(vectors)} interrupt vectors: at most {RP_MAX_VEC}")
        if ncallsites > KS_MAX_CALLSITES or not 0 <= dispatch_cs < ncallsites:
            raise ValueError("call sites out of range")
        if len(timers) > KS_MAX_TIMERS or len(bhs) + 1 > KS_MAX_BHS:
            raise ValueError("too many timers or bottom halves for the main loop")
        if not -1 <= aio_vec < len(vectors):
            raise ValueError("AIO completion vector out of range")
        fx = np.ascontiguousarray(fx, dtype=np.int64).reshape(-1, len(FX_FIELDS))
        aio = np.ascontiguousarray(aio, dtype=np.int64).reshape(-1, len(AIO_FIELDS))
        self._keep.extend((fx, aio))
        nfx = fx.shape[0]
        naio = aio.shape[0]
        nvec = len(vectors)
        ntm = len(timers)
        nbh = len(bhs) + 1
        # -- every index the threads will follow, checked once
        if nfx:
            fv = fx
            for j in range(nfx):
                k = <int>fv[j, 1]
                if fv[j, 0] < 0 or k < 0 or k >= RP_FX_KINDS:
                    raise ValueError(f"effect {j}: kind {k} or offset out of range")
                if (k == RP_FX_SUBMIT and not 0 <= fv[j, 2] < naio) or \
                        (k in (RP_FX_ARM_REL, RP_FX_ARM_GRID, RP_FX_DEL) and not 0 <= fv[j, 2] < ntm) or \
                        (k == RP_FX_ARM_GRID and fv[j, 3] <= 0) or \
                        (k == RP_FX_RAISE and not 0 <= fv[j, 2] < nvec) or \
                        (k == RP_FX_BH and not 0 <= fv[j, 2] < nbh):
                    raise ValueError(f"effect {j}: index out of range")
        if naio:
            av = aio
            for j in range(naio):
                if not (1 <= av[j, 0] <= 3) or av[j, 4] < 0 or av[j, 5] < 0 or av[j, 6] < 0:
                    raise ValueError(f"AIO request {j}: operation or time out of range")
        self.r.fx = <const rp_fx *>(<size_t>fx.ctypes.data) if nfx else NULL
        self.r.nfx = nfx
        self.r.aio = <const rp_aio_spec *>(<size_t>aio.ctypes.data) if naio else NULL
        self.r.naio = naio
        self.r.nv = nv
        self.r.aio_vec = aio_vec
        self.r.halt_poll_max = max(halt_poll_raw, 0)
        self.r.irqchip_user = irqchip_user
        for k in range(nvec):
            self.r.vectors[k] = <int32_t>vectors[k]
        lines = np.asarray(lines, dtype=np.int64).reshape(nv, nvec) if nvec else None
        for i in range(nv):
            for k in range(nvec):
                self.r.lines[i][k] = <int32_t>lines[i, k]
        self.r.v = <rp_vcpu *>calloc(nv, sizeof(rp_vcpu))
        self.r.timers = <rp_timer *>calloc(max(ntm, 1), sizeof(rp_timer))
        self.r.bhs = <rp_bh *>calloc(len(bhs) + 1, sizeof(rp_bh))
        self.r.m = <ks_machine *>calloc(1, sizeof(ks_machine))
        if self.r.v == NULL or self.r.timers == NULL or self.r.bhs == NULL or self.r.m == NULL:
            raise MemoryError()
        pthread_mutex_init(&self.r.done_mu, NULL)
        for i in range(nv):
            pthread_mutex_init(&self.r.v[i].mu, NULL)
            pthread_cond_init(&self.r.v[i].cond, NULL)
        # -- the vCPU streams
        self.vcpu_names = []
        for i, (name, prog, isr) in enumerate(vcpus):
            self._check_exits(name, prog, False, nvec, ncallsites, nfx)
            self.r.v[i].run = &self.r
            self.r.v[i].index = i
            self.r.v[i].wait_vec = -1
            self.r.v[i].n = prog.shape[0]
            self.r.v[i].prog = <rp_exit *>(<size_t>prog.ctypes.data) if prog.shape[0] else NULL
            self._keep.append(prog)
            for vec, S in isr.items():
                if not 0 <= vec < nvec:
                    raise ValueError(f"{name}: ISR vector out of range")
                self._check_exits(name, S, True, nvec, ncallsites, nfx)
                self._keep.append(S)
                self.r.v[i].isr[vec] = <rp_exit *>(<size_t>S.ctypes.data) if S.shape[0] else NULL
                self.r.v[i].nisr[vec] = S.shape[0]
            self.vcpu_names.append(name)
        # -- a machine without KVM: the BQL, the main loop, the AIO pool
        m = self.r.m
        m.vm_fd = -1
        lock_init(&m.bql, 0)
        m.bql.inject_hold_raw[dispatch_cs] = max(dispatch_add_raw, 0)
        m.loop = <ks_loop *>calloc(1, sizeof(ks_loop))
        m.aio = <ks_aio_pool *>calloc(1, sizeof(ks_aio_pool))
        if m.loop == NULL or m.aio == NULL:
            raise MemoryError()
        m.aio.efd = -1
        m.loop.notify_fd = -1
        loop_init(m.loop, m, dispatch_cs)
        aio_init(m.aio, m, nworkers)
        self.nworkers = nworkers
        self.r.bhs[0].bh = m.aio.completion_bh
        self.r.nbhs = len(bhs) + 1
        for k, dur in enumerate(bhs):
            a1 = np.ascontiguousarray(dur, dtype=np.int64)
            self._keep.append(a1)
            self.r.bhs[k + 1].run = &self.r
            self.r.bhs[k + 1].dur = &a1[0] if a1.shape[0] else NULL
            self.r.bhs[k + 1].n = a1.shape[0]
            self.r.bhs[k + 1].bh = bh_new(m.loop, rp__bh_cb, &self.r.bhs[k + 1], 0)
            if self.r.bhs[k + 1].bh == NULL:
                raise KvmscopeError("main loop bottom-half table full")
        for k, (vcpu, vec, cb, roff) in enumerate(timers):
            a1 = np.ascontiguousarray(cb, dtype=np.int64)
            a2 = np.ascontiguousarray(roff, dtype=np.int64)
            if a1.shape[0] == 0 or a1.shape[0] != a2.shape[0] or not 0 <= vcpu < nv \
                    or not -1 <= vec < nvec:
                raise ValueError(f"timer {k}: callback times, vCPU or vector out of range")
            self._keep.extend((a1, a2))
            self.r.timers[k].run = &self.r
            self.r.timers[k].vcpu = vcpu
            self.r.timers[k].vec = vec
            self.r.timers[k].cb = &a1[0]
            self.r.timers[k].roff = &a2[0]
            self.r.timers[k].ncb = a1.shape[0]
            self.r.timers[k].timer = timer_new(m.loop, rp__timer_cb, &self.r.timers[k])
            if self.r.timers[k].timer == NULL:
                raise KvmscopeError("main loop timer table full")
        self.r.ntimers = ntm
        # -- threads, in the order of a run: vCPUs, main loop, AIO workers, drain
        for i in range(nv):
            tracer.register(&self.r.v[i].t, self.vcpu_names[i], "vcpu")
        tracer.register(&m.loop.thr, "main", "main")
        for i in range(nworkers):
            tracer.register(&m.aio.thr[i], f"aio{i}", "aio")
            m.aio.thr[i].ring = NULL     # completions are recorded by the loop, as in a run
        self.drain_thr.tid = ks_gettid()
        tracer.register(&self.drain_thr, "drain", "drain")
        self.drain_thr.ring = NULL
        self.ready = True

    cdef _check_exits(self, name, arr, bint isr, int nvec, int ncallsites, int64_t nfx):
        cdef const int64_t[:, ::1] e
        cdef int64_t j
        if arr.dtype != np.int64 or arr.ndim != 2 or arr.shape[1] != len(EXIT_FIELDS) \
                or not arr.flags.c_contiguous:
            raise ValueError(f"{name}: exits must be a C-contiguous int64 array of "
                             f"{len(EXIT_FIELDS)} columns")
        if arr.shape[0] == 0:
            return
        e = arr
        for j in range(arr.shape[0]):
            if not (0 <= e[j, 0] <= 2) or (isr and e[j, 0] == RP_GATE_WAIT) \
                    or (e[j, 0] == RP_GATE_WAIT and not 0 <= e[j, 2] < nvec) \
                    or not -1 <= e[j, 4] < ncallsites \
                    or not -1 <= e[j, 9] < nvec \
                    or e[j, 3] < 0 or e[j, 10] < 0 \
                    or e[j, 15] < 0 or e[j, 16] < 0 or e[j, 15] + e[j, 16] > nfx \
                    or e[j, 1] < 0 or e[j, 5] < 0 or e[j, 6] < 0 or e[j, 7] < 0 or e[j, 8] < 0 \
                    or e[j, 11] < 0 or e[j, 12] < 0 or e[j, 13] < 0:
                raise ValueError(f"{name}: exit {j} of the schedule out of range")

    def __dealloc__(self):
        cdef int i
        cdef ks_machine *m = self.r.m
        if m != NULL:
            if m.loop != NULL:
                loop_destroy(m.loop)
                free(m.loop)
            if m.aio != NULL:
                aio_destroy(m.aio)
                pthread_mutex_destroy(&m.aio.mutex)
                pthread_cond_destroy(&m.aio.cond)
                free(m.aio)
            pthread_mutex_destroy(&m.bql.mutex)
            free(m)
        if self.r.v != NULL:
            for i in range(self.r.nv):
                pthread_mutex_destroy(&self.r.v[i].mu)
                pthread_cond_destroy(&self.r.v[i].cond)
            free(self.r.v)
        free(self.r.timers)
        free(self.r.bhs)
        pthread_mutex_destroy(&self.r.done_mu)

    def run(self, double watchdog_s, drain=None, double drain_s=0.05):
        """Start the main loop, the AIO workers and the vCPUs; wait until every vCPU has
        finished its stream (calling ``drain()`` every ``drain_s`` seconds meanwhile),
        then stop the loop and the pool.

        Returns
        -------
        tuple
            ``(start_ns, end_ns)`` on the run clock: the vCPUs' start and the end of
            the last one's stream.

        Raises
        ------
        KvmscopeError
            The streams did not finish within ``watchdog_s`` seconds (a vCPU waits for
            an interrupt that never comes): every thread is stopped first.
        """
        cdef int i, rc, started = 0, running = 1
        cdef int64_t t0, deadline, step, next_drain
        cdef timespec ts
        cdef ks_machine *m = self.r.m
        if self.ran or not self.ready:
            raise KvmscopeError("a schedule runs once")
        self.ran = True
        stuck = None
        loop_start(m.loop)
        try:
            for i in range(self.nworkers):
                self.r.workers[i].run = &self.r
                self.r.workers[i].index = i
                rc = pthread_create(&m.aio.workers[i], NULL, rp__worker, &self.r.workers[i])
                if rc != 0:
                    raise_errno(f"pthread_create aio{i}", rc)
                m.aio.started[i] = 1
                pthread_setname_np(m.aio.workers[i], f"aio{i}".encode())
            self.r.running = self.r.nv
            for i in range(self.r.nv):
                rc = pthread_create(&self.r.v[i].pthread, NULL, rp__vcpu_main, &self.r.v[i])
                if rc != 0:
                    raise_errno(f"pthread_create {self.vcpu_names[i]}", rc)
                self.r.v[i].started = 1
                pthread_setname_np(self.r.v[i].pthread, f"vcpu{i}".encode())
                started += 1
        finally:
            t0 = ks_now()
            self.r.t0 = t0
            if started < self.r.nv:
                ks_store_release_int(&self.r.stop, 1)
                pthread_mutex_lock(&self.r.done_mu)
                self.r.running -= self.r.nv - started
                pthread_mutex_unlock(&self.r.done_mu)
            ks_store_release_int(&self.r.go, 1)
            deadline = ks_mono_ns() + <int64_t>(watchdog_s * 1e9)
            step = <int64_t>(max(drain_s, 0.001) * 1e9)
            ts.tv_sec = 0
            ts.tv_nsec = 1000000
            try:
                while True:
                    with nogil:
                        next_drain = ks_mono_ns() + step
                        while True:
                            pthread_mutex_lock(&self.r.done_mu)
                            running = self.r.running
                            pthread_mutex_unlock(&self.r.done_mu)
                            if running == 0 or ks_mono_ns() >= deadline or ks_mono_ns() >= next_drain:
                                break
                            nanosleep(&ts, NULL)
                    if running == 0 or ks_mono_ns() >= deadline:
                        break
                    if drain is not None:
                        drain()
            finally:
                if running:
                    stuck = self._stuck()
                    self._stop_vcpus()
                with nogil:
                    for i in range(started):
                        pthread_join(self.r.v[i].pthread, NULL)
                    loop_stop_join(m.loop)
                    aio_stop_join(m.aio)
                    # every thread has ended: finish the last completions on the loop's behalf
                    aio_complete_all(m.aio, &m.loop.thr)
        if stuck is not None:
            raise KvmscopeError(f"the schedule did not finish within {watchdog_s:g}s: {stuck}")
        return ks_raw_to_ns(&g_clock, t0), ks_raw_to_ns(&g_clock, self.r.end)

    cdef str _stuck(self):
        cdef int i
        out = []
        for i in range(self.r.nv):
            pthread_mutex_lock(&self.r.v[i].mu)
            if not self.r.v[i].done and self.r.v[i].wait_vec >= 0:
                out.append(f"{self.vcpu_names[i]} waits for interrupt "
                           f"{self.r.vectors[self.r.v[i].wait_vec]:#x} number "
                           f"{self.r.v[i].wait_need} (has {self.r.v[i].cnt[self.r.v[i].wait_vec]})")
            elif not self.r.v[i].done:
                out.append(f"{self.vcpu_names[i]} still running at exit {self.r.v[i].exits}")
            pthread_mutex_unlock(&self.r.v[i].mu)
        return "; ".join(out) or "no vCPU left"

    cdef void _stop_vcpus(self) noexcept:
        cdef int i
        ks_store_release_int(&self.r.stop, 1)
        for i in range(self.r.nv):
            pthread_mutex_lock(&self.r.v[i].mu)
            pthread_cond_broadcast(&self.r.v[i].cond)
            pthread_mutex_unlock(&self.r.v[i].mu)

    def stats(self):
        """Per vCPU and main loop: ``acquisitions``, ``contended``, ``wait_ns`` as the lock
        counted them; per vCPU ``exits``; the pool's ``submitted`` and ``completed``; per
        timer its fires."""
        cdef int i
        cdef double ns_per_raw = 1.0 / raw_per_ns_c()
        cdef ks_machine *m = self.r.m
        th = {}
        for i in range(self.r.nv):
            th[self.vcpu_names[i]] = {"acquisitions": self.r.v[i].t.lock_acquisitions,
                                      "contended": self.r.v[i].t.lock_contended,
                                      "wait_ns": round(self.r.v[i].t.lock_wait_raw * ns_per_raw),
                                      "exits": self.r.v[i].exits}
        th["main"] = {"acquisitions": m.loop.thr.lock_acquisitions,
                      "contended": m.loop.thr.lock_contended,
                      "wait_ns": round(m.loop.thr.lock_wait_raw * ns_per_raw)}
        return {"threads": th,
                "bql": {k: sum(t[k] for t in th.values())
                        for k in ("acquisitions", "contended", "wait_ns")},
                "main_loop": {"iterations": m.loop.iterations},
                "aio": {"submitted": m.aio.submitted, "completed": m.aio.completed},
                "timer_fires": [self.r.timers[i].k for i in range(self.r.ntimers)]}
