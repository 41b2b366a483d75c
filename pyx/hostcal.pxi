# Host calibration: how long a thread asleep on the BQL's kind of mutex takes to
# run again after the owner lets go (a futex wake-up on this host).
#
# The re-execution model needs this latency whenever a prediction makes a
# waiter sleep that the recording did not (a lengthened critical section on a
# workload that was hardly contended). A recording with few such hand-offs
# cannot teach it, so every run measures it on the host before its vCPUs start.

cdef struct ks_wakecal:
    pthread_mutex_t mutex
    int phase               # 2i+1: the holder has the lock for round i; 2i+2: round i done
    int abort
    int n
    int64_t hold_ns         # how long the holder keeps the lock once the sleeper asked
    int64_t gap_ns          # the holder's time outside the lock between rounds
    int64_t deadline        # CLOCK_MONOTONIC ns: give up after this
    int64_t released        # written under the mutex by the holder
    int64_t *lat
    int64_t *unlock         # the holder's unlock, which wakes the sleeper


cdef inline int wakecal__wait_phase(ks_wakecal *c, int want) noexcept nogil:
    """Spin until ``phase == want``; 0, or -1 when the calibration gave up."""
    while ks_load_acquire_int(&c.phase) != want:
        if ks_load_acquire_int(&c.abort) or ks_mono_ns() > c.deadline:
            ks_store_release_int(&c.abort, 1)
            return -1
        ks_cpu_relax()
    return 0


cdef inline void wakecal__spin(int64_t ns) noexcept nogil:
    cdef int64_t t0 = ks_mono_ns()
    while ks_mono_ns() - t0 < ns:
        ks_cpu_relax()


cdef void *wakecal__holder(void *arg) noexcept nogil:
    cdef ks_wakecal *c = <ks_wakecal *>arg
    cdef int i
    cdef int64_t t
    for i in range(c.n):
        pthread_mutex_lock(&c.mutex)
        ks_store_release_int(&c.phase, 2 * i + 1)
        wakecal__spin(c.hold_ns)
        t = ks_mono_ns()
        c.released = t
        pthread_mutex_unlock(&c.mutex)
        c.unlock[i] = ks_mono_ns() - t
        if wakecal__wait_phase(c, 2 * i + 2) < 0:
            return NULL
        wakecal__spin(c.gap_ns)
    return NULL


cdef void *wakecal__sleeper(void *arg) noexcept nogil:
    cdef ks_wakecal *c = <ks_wakecal *>arg
    cdef int i
    cdef int64_t t
    for i in range(c.n):
        if wakecal__wait_phase(c, 2 * i + 1) < 0:
            return NULL
        wakecal__spin(1000)            # the holder is well inside its hold: this try sleeps
        pthread_mutex_lock(&c.mutex)
        t = ks_mono_ns()
        c.lat[i] = t - c.released
        pthread_mutex_unlock(&c.mutex)
        ks_store_release_int(&c.phase, 2 * i + 2)
    return NULL


def measure_mutex_handoff(int n=200, int64_t hold_ns=10000, int64_t gap_ns=5000,
                          double timeout_s=1.0):
    """Sleeping hand-offs of a pthread mutex on this host, in ns.

    Two threads take turns: the holder takes the mutex and keeps it
    ``hold_ns``; the other asks for it meanwhile (and, with glibc's default
    mutex, goes to sleep in the kernel). The BQL is the same kind of mutex,
    so this is what a waiter that slept on the BQL pays, and what waking it
    costs its owner.

    Returns
    -------
    dict
        ``wake_ns``: from the holder's unlock to the moment the sleeper runs
        with the mutex; ``unlock_ns``: how long that unlock took the holder
        (a futex wake); ``n`` values each, sorted. Both empty if the process
        may run on one CPU only, a thread could not be started or the
        rounds did not finish within ``timeout_s`` (a host too busy).
    """
    if n < 1 or n > 100000 or hold_ns < 1000 or gap_ns < 0:
        raise ValueError("measure_mutex_handoff: n in 1..100000, hold_ns >= 1000, gap_ns >= 0")
    if len(os.sched_getaffinity(0)) < 2:
        # one CPU: the two threads would take turns by time slices, and the
        # rounds measure the scheduler's slice, not a wake-up
        return {"wake_ns": [], "unlock_ns": []}
    cdef ks_wakecal c
    cdef pthread_t th[2]
    cdef int rc0 = 0, rc1 = 0
    memset(&c, 0, sizeof(ks_wakecal))
    c.lat = <int64_t *>calloc(n, sizeof(int64_t))
    c.unlock = <int64_t *>calloc(n, sizeof(int64_t))
    if c.lat == NULL or c.unlock == NULL:
        free(c.lat)
        free(c.unlock)
        raise MemoryError()
    try:
        if pthread_mutex_init(&c.mutex, NULL) != 0:
            return {"wake_ns": [], "unlock_ns": []}
        c.n, c.hold_ns, c.gap_ns = n, hold_ns, gap_ns
        c.deadline = ks_mono_ns() + <int64_t>(timeout_s * 1e9)
        with nogil:
            rc0 = pthread_create(&th[0], NULL, wakecal__holder, &c)
            if rc0 == 0:
                rc1 = pthread_create(&th[1], NULL, wakecal__sleeper, &c)
                if rc1 != 0:
                    ks_store_release_int(&c.abort, 1)
                pthread_join(th[0], NULL)
                if rc1 == 0:
                    pthread_join(th[1], NULL)
        pthread_mutex_destroy(&c.mutex)
        if rc0 != 0 or rc1 != 0 or c.abort:
            return {"wake_ns": [], "unlock_ns": []}
        return {"wake_ns": sorted(c.lat[i] for i in range(n)),
                "unlock_ns": sorted(c.unlock[i] for i in range(n))}
    finally:
        free(c.lat)
        free(c.unlock)


def measure_wake_latency(int n=200, int64_t hold_ns=10000, int64_t gap_ns=5000,
                         double timeout_s=1.0):
    """The ``wake_ns`` of :func:`measure_mutex_handoff`: sorted ns, empty if
    the calibration could not finish."""
    return measure_mutex_handoff(n, hold_ns, gap_ns, timeout_s)["wake_ns"]
