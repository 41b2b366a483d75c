# Instrumented mutex (the BQL): request, acquired and released times, call site, previous owner.

cdef int lock_init(ks_lock *l, uint32_t lock_id) except -1:
    memset(l, 0, sizeof(ks_lock))
    if pthread_mutex_init(&l.mutex, NULL) != 0:
        raise_errno("pthread_mutex_init")
    l.id = lock_id
    l.last_owner = -1
    return 0


cdef inline void lock_acquire(ks_lock *l, ks_thread *t, uint32_t callsite) noexcept nogil:
    """Take ``l`` for thread ``t`` at ``callsite``; a failed first try counts as contention."""
    cdef int64_t req = 0, acq, inject
    cdef uint8_t contended = 0
    if t.ring != NULL:
        req = ks_now()
    if pthread_mutex_trylock(&l.mutex) == 0:
        # read the clock again: the previous holder may have released between
        # our request timestamp and the trylock, and its release must not
        # appear to overlap our acquisition
        acq = ks_now_ordered() if t.ring != NULL else 0
    else:
        if t.ring == NULL:
            req = ks_now()
        pthread_mutex_lock(&l.mutex)
        acq = ks_now_ordered()
        contended = 1
        t.lock_contended += 1
        t.lock_wait_raw += acq - req
    t.lock_acquisitions += 1
    l.cur_request = req
    l.cur_acquired = acq
    l.cur_callsite = callsite
    l.cur_contended = contended
    l.cur_prev_owner = <int16_t>l.last_owner
    inject = l.inject_hold_raw[callsite]
    if inject > 0:
        # experiment: lengthen this critical section by busy-holding the lock
        if acq == 0:
            acq = ks_now()
            l.cur_acquired = acq
        while ks_now() - acq < inject:
            ks_cpu_relax()


cdef inline void lock_release(ks_lock *l, ks_thread *t) noexcept nogil:
    """Release ``l``; the acquisition record is written after the unlock, outside the critical section."""
    cdef int64_t rel = 0
    cdef int64_t req = l.cur_request, acq = l.cur_acquired
    cdef uint32_t callsite = l.cur_callsite
    cdef int16_t prev = l.cur_prev_owner
    cdef uint8_t contended = l.cur_contended
    if t.ring != NULL:
        rel = ks_now()
    l.last_owner = t.id
    pthread_mutex_unlock(&l.mutex)
    if t.ring != NULL:
        trace_lock(t.ring, t.id, l.id, callsite, req, acq, rel, prev, contended)
