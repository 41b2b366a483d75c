# Main loop: ppoll() over fd handlers, timers and bottom halves, without the GIL; BQL held while dispatching.

cdef extern from "<stdlib.h>" nogil:
    void *malloc(size_t n)

cdef extern from "<sys/prctl.h>" nogil:
    int prctl(int option, ...)
    enum:
        PR_SET_TIMERSLACK

# Idle bottom halves run when the loop would otherwise block, at least this often.
cdef int64_t IDLE_BH_PERIOD_NS = 10000000


cdef inline void loop__notify(ks_loop *l) noexcept nogil:
    cdef uint64_t one = 1
    write(l.notify_fd, &one, 8)


cdef ks_bh *bh_new(ks_loop *l, ks_cb cb, void *opaque, int idle) noexcept nogil:
    """A bottom half of loop ``l``; NULL when the table is full."""
    cdef ks_bh *bh
    if l.nbhs >= KS_MAX_BHS:
        return NULL
    bh = <ks_bh *>calloc(1, sizeof(ks_bh))
    if bh == NULL:
        return NULL
    bh.id = l.nbhs
    bh.cb = cb
    bh.opaque = opaque
    bh.idle = idle
    bh.loop = l
    l.bhs[l.nbhs] = bh
    l.nbhs += 1
    return bh


cdef void bh_schedule(ks_bh *bh, ks_thread *self) noexcept nogil:
    """Schedule ``bh`` to run in the main loop; callable from any thread.

    The first schedule since the last run records when and by whom; later
    ones before the run coalesce into it.  Wakes the loop through its eventfd.
    """
    if not ks_cas_int(&bh.state, 0, 1):
        return
    bh.scheduled_raw = ks_now()
    bh.sched_thread = self.id
    ks_store_release_int(&bh.state, 2)
    if not bh.idle:
        loop__notify(bh.loop)


cdef int bh_cancel(ks_bh *bh) noexcept nogil:
    """Unschedule ``bh``; 1 if it was scheduled."""
    return ks_cas_int(&bh.state, 2, 0)


cdef ks_timer *timer_new(ks_loop *l, ks_cb cb, void *opaque) noexcept nogil:
    cdef ks_timer *t
    if l.ntimers >= KS_MAX_TIMERS:
        return NULL
    t = <ks_timer *>calloc(1, sizeof(ks_timer))
    if t == NULL:
        return NULL
    t.id = l.ntimers
    t.cb = cb
    t.opaque = opaque
    t.loop = l
    l.timers[l.ntimers] = t
    l.ntimers += 1
    return t


cdef void timer_mod_locked(ks_timer *t, int64_t expire_raw) noexcept nogil:
    """Arm ``t`` for ``expire_raw`` (run-clock units).  Caller holds the BQL."""
    t.armed_raw = ks_now()
    t.expire_raw = expire_raw
    t.armed = 1
    # the loop may be blocked in ppoll with a later deadline
    if not pthread_equal_self(t.loop.pthread, t.loop.started):
        loop__notify(t.loop)


cdef void timer_del_locked(ks_timer *t) noexcept nogil:
    t.armed = 0


cdef inline int pthread_equal_self(pthread_t th, int started) noexcept nogil:
    return started and pthread_equal(th, pthread_self())


cdef int loop_set_fd_handler(ks_loop *l, int fd, ks_cb read, ks_cb write_cb,
                             ks_poll_cb read_poll, void *opaque) noexcept nogil:
    """Register (or, with no callbacks, remove) the handlers of ``fd``; -1 when full."""
    cdef int i
    for i in range(l.nhandlers):
        if l.handlers[i].fd == fd:
            if read == NULL and write_cb == NULL:
                l.handlers[i] = l.handlers[l.nhandlers - 1]
                l.nhandlers -= 1
            else:
                l.handlers[i].read = read
                l.handlers[i].write = write_cb
                l.handlers[i].read_poll = read_poll
                l.handlers[i].opaque = opaque
            return 0
    if read == NULL and write_cb == NULL:
        return 0
    if l.nhandlers >= KS_MAX_FDS:
        return -1
    l.handlers[l.nhandlers].fd = fd
    l.handlers[l.nhandlers].read = read
    l.handlers[l.nhandlers].write = write_cb
    l.handlers[l.nhandlers].read_poll = read_poll
    l.handlers[l.nhandlers].opaque = opaque
    l.nhandlers += 1
    return 0


cdef void loop__drain_notify(void *opaque) noexcept nogil:
    cdef ks_loop *l = <ks_loop *>opaque
    cdef uint64_t v
    read(l.notify_fd, &v, 8)


cdef inline int64_t loop__timeout_raw(ks_loop *l, int64_t now) noexcept nogil:
    """Poll timeout in clock units: 0 with bottom halves pending, else the earliest deadline (-1: none)."""
    cdef int i
    cdef int64_t best = -1, d
    cdef ks_timer *t
    cdef ks_bh *bh
    for i in range(l.nbhs):
        bh = l.bhs[i]
        if ks_load_acquire_int(&bh.state) != 0:
            if not bh.idle:
                return 0
            best = <int64_t>(IDLE_BH_PERIOD_NS * raw_per_ns_c())
    for i in range(l.ntimers):
        t = l.timers[i]
        if t.armed:
            d = t.expire_raw - now
            if d < 0:
                d = 0
            if best < 0 or d < best:
                best = d
    return best


cdef inline void loop__run_timers(ks_loop *l) noexcept nogil:
    cdef int i, again = 1
    cdef ks_timer *t
    cdef ks_timer *due
    cdef int64_t now, fire, armed, expire
    # earliest deadline first; a callback may re-arm its timer for later
    while again:
        again = 0
        due = NULL
        now = ks_now()
        for i in range(l.ntimers):
            t = l.timers[i]
            if t.armed and t.expire_raw <= now and (due == NULL or t.expire_raw < due.expire_raw):
                due = t
        if due != NULL:
            again = 1
            due.armed = 0
            armed = due.armed_raw
            expire = due.expire_raw
            fire = ks_now()
            due.cb(due.opaque)
            trace_timer(l.thr.ring, l.thr.id, due.id, armed, expire, fire, ks_now())


cdef inline void loop__run_bhs(ks_loop *l, int run_idle) noexcept nogil:
    cdef int i
    cdef ks_bh *bh
    cdef int64_t sched, start
    cdef int16_t who
    for i in range(l.nbhs):
        bh = l.bhs[i]
        if bh.idle and not run_idle:
            continue
        if ks_load_acquire_int(&bh.state) != 2:
            continue
        sched = bh.scheduled_raw
        who = bh.sched_thread
        # clear before running: a schedule during the callback runs it again
        if not ks_cas_int(&bh.state, 2, 0):
            continue
        start = ks_now()
        bh.cb(bh.opaque)
        bh.runs += 1
        trace_bh(l.thr.ring, l.thr.id, bh.id, who, sched, start, ks_now(), <uint8_t>bh.idle)


cdef void *loop__main(void *arg) noexcept nogil:
    cdef ks_loop *l = <ks_loop *>arg
    cdef ks_machine *m = l.m
    cdef pollfd fds[KS_MAX_FDS]
    cdef ks_fd_handler *map_[KS_MAX_FDS]
    cdef int nfds, i, n = 0
    cdef int64_t tmo_raw, now, poll_enter = 0, poll_exit = 0, last_idle, released, prev_tmo = 0
    cdef timespec ts
    cdef double ns_per_raw = 1.0 / raw_per_ns_c()
    cdef sigset_t mask
    cdef ks_fd_handler *h
    sigfillset(&mask)
    pthread_sigmask(SIG_SETMASK, &mask, NULL)
    # the default 50 us timer slack would make every timer that late
    prctl(PR_SET_TIMERSLACK, <unsigned long>1, 0, 0, 0)
    l.thr.tid = ks_gettid()
    cpustat__begin(&l.thr)
    last_idle = ks_now()
    lock_acquire(&m.bql, &l.thr, l.dispatch_callsite)
    while not ks_load_acquire_int(&l.stop):
        now = ks_now()
        tmo_raw = loop__timeout_raw(l, now)
        nfds = 0
        for i in range(l.nhandlers):
            h = &l.handlers[i]
            fds[nfds].fd = h.fd
            fds[nfds].events = 0
            fds[nfds].revents = 0
            if h.read != NULL and (h.read_poll == NULL or h.read_poll(h.opaque)):
                fds[nfds].events |= POLLIN
            if h.write != NULL:
                fds[nfds].events |= POLLOUT
            map_[nfds] = h
            nfds += 1
        lock_release(&m.bql, &l.thr)
        released = ks_now()
        # the previous iteration's row ends here, with the BQL dropped
        if l.iterations:
            loop__record(l, n, prev_tmo, poll_enter, poll_exit, released, ns_per_raw)
        poll_enter = released
        prev_tmo = tmo_raw
        if tmo_raw >= 0:
            ts.tv_sec = <long>(tmo_raw * ns_per_raw / 1e9)
            ts.tv_nsec = <long>(tmo_raw * ns_per_raw - ts.tv_sec * 1e9)
            n = ppoll(fds, nfds, &ts, NULL)
        else:
            n = ppoll(fds, nfds, NULL, NULL)
        poll_exit = ks_now()
        lock_acquire(&m.bql, &l.thr, l.dispatch_callsite)
        if n > 0:
            for i in range(nfds):
                if fds[i].revents & (POLLIN | POLLHUP | POLLERR) and map_[i].read != NULL:
                    map_[i].read(map_[i].opaque)
                if fds[i].revents & POLLOUT and map_[i].write != NULL:
                    map_[i].write(map_[i].opaque)
        loop__run_timers(l)
        loop__run_bhs(l, 0)
        if n == 0 or poll_exit - last_idle >= <int64_t>(IDLE_BH_PERIOD_NS * raw_per_ns_c()):
            loop__run_bhs(l, 1)
            last_idle = poll_exit
        l.iterations += 1
    lock_release(&m.bql, &l.thr)
    if l.iterations:
        loop__record(l, n, prev_tmo, poll_enter, poll_exit, ks_now(), ns_per_raw)
    cpustat__end(&l.thr)
    return NULL


cdef inline void loop__record(ks_loop *l, int n, int64_t tmo_raw, int64_t poll_enter,
                              int64_t poll_exit, int64_t dispatch_end, double ns_per_raw) noexcept nogil:
    trace_loop(l.thr.ring, l.thr.id, l.iterations,
               <int64_t>(tmo_raw * ns_per_raw) if tmo_raw >= 0 else -1,
               poll_enter, poll_exit, <uint32_t>(n if n > 0 else 0), dispatch_end)


cdef int loop_init(ks_loop *l, ks_machine *m, uint32_t dispatch_callsite) except -1:
    memset(l, 0, sizeof(ks_loop))
    l.m = m
    l.dispatch_callsite = dispatch_callsite
    l.notify_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)
    if l.notify_fd < 0:
        raise_errno("eventfd for the main loop")
    loop_set_fd_handler(l, l.notify_fd, loop__drain_notify, NULL, NULL, l)
    return 0


cdef int loop_start(ks_loop *l) except -1:
    cdef int rc = pthread_create(&l.pthread, NULL, loop__main, l)
    if rc != 0:
        raise_errno("pthread_create main loop", rc)
    l.started = 1
    pthread_setname_np(l.pthread, b"main")
    return 0


cdef void loop_stop_join(ks_loop *l) noexcept nogil:
    if not l.started:
        return
    ks_store_release_int(&l.stop, 1)
    loop__notify(l)
    pthread_join(l.pthread, NULL)
    l.started = 0


cdef void loop_destroy(ks_loop *l) noexcept nogil:
    cdef int i
    for i in range(l.nbhs):
        free(l.bhs[i])
    for i in range(l.ntimers):
        free(l.timers[i])
    l.nbhs = 0
    l.ntimers = 0
    if l.notify_fd >= 0:
        close(l.notify_fd)
        l.notify_fd = -1
