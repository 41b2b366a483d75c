# Self-tests and micro-benchmarks of the core, for the test suite and bench/: not used by a recording.

# ---- self-test of the loop on real threads and real file descriptors ------------
cdef struct ks_selftest:
    ks_loop *loop
    int pipe_r
    int allow_read          # read_poll answer
    int reads
    int bytes_read
    int bh_runs
    int idle_runs
    int cancelled_runs
    int timer_order[4]
    int ntimer_fired


cdef int selftest__read_poll(void *opaque) noexcept nogil:
    return (<ks_selftest *>opaque).allow_read


cdef void selftest__read(void *opaque) noexcept nogil:
    cdef ks_selftest *st = <ks_selftest *>opaque
    cdef char buf[64]
    cdef long n = read(st.pipe_r, buf, sizeof(buf))
    st.reads += 1
    if n > 0:
        st.bytes_read += n


cdef void selftest__bh(void *opaque) noexcept nogil:
    (<ks_selftest *>opaque).bh_runs += 1


cdef void selftest__idle(void *opaque) noexcept nogil:
    (<ks_selftest *>opaque).idle_runs += 1


cdef void selftest__cancelled(void *opaque) noexcept nogil:
    (<ks_selftest *>opaque).cancelled_runs += 1


cdef struct ks_selftest_timer:
    ks_selftest *st
    int tag


cdef void selftest__timer(void *opaque) noexcept nogil:
    cdef ks_selftest_timer *t = <ks_selftest_timer *>opaque
    if t.st.ntimer_fired < 4:
        t.st.timer_order[t.st.ntimer_fired] = t.tag
    t.st.ntimer_fired += 1


def loop_selftest():
    """Exercise the main loop on its own thread with real fds, timers and bottom halves.

    Returns a dict of what happened, for the test suite: a read handler gated
    by ``read_poll``, bottom halves scheduled from another thread (coalesced,
    cancelled, idle), and timers firing in deadline order after ``timer_del``.
    """
    cdef ks_machine *m = <ks_machine *>calloc(1, sizeof(ks_machine))
    cdef ks_loop *l = <ks_loop *>calloc(1, sizeof(ks_loop))
    cdef ks_selftest st
    cdef ks_thread other
    cdef ks_bh *bh
    cdef ks_bh *idle
    cdef ks_bh *cancelled
    cdef ks_timer *timers[4]
    cdef ks_selftest_timer tags[4]
    cdef int i, cancelled_ok
    cdef int64_t now
    cdef double rpn = raw_per_ns()
    if m == NULL or l == NULL:
        raise MemoryError()
    memset(&st, 0, sizeof(st))
    memset(&other, 0, sizeof(other))
    other.id = 1
    r, w = os.pipe()
    try:
        lock_init(&m.bql, 0)
        m.loop = l
        loop_init(l, m, 0)
        st.loop = l
        st.pipe_r = r
        loop_set_fd_handler(l, r, selftest__read, NULL, selftest__read_poll, &st)
        bh = bh_new(l, selftest__bh, &st, 0)
        idle = bh_new(l, selftest__idle, &st, 1)
        cancelled = bh_new(l, selftest__cancelled, &st, 0)
        # deadlines 40, 10, 30 ms and one deleted: expect the order 1, 2, 0
        for i in range(4):
            tags[i].st = &st
            tags[i].tag = i
            timers[i] = timer_new(l, selftest__timer, &tags[i])
        now = ks_now()
        timer_mod_locked(timers[0], now + <int64_t>(40e6 * rpn))
        timer_mod_locked(timers[1], now + <int64_t>(10e6 * rpn))
        timer_mod_locked(timers[2], now + <int64_t>(30e6 * rpn))
        timer_mod_locked(timers[3], now + <int64_t>(20e6 * rpn))
        timer_del_locked(timers[3])
        os.write(w, b"x" * 10)          # not read while read_poll says no
        loop_start(l)
        with nogil:
            usleep(20000)
        reads_while_gated = st.reads
        with nogil:
            pthread_mutex_lock(&m.bql.mutex)
            st.allow_read = 1
            pthread_mutex_unlock(&m.bql.mutex)
            loop__notify(l)             # read_poll is asked again on the next iteration
            # three schedules from this thread before the loop runs it coalesce
            pthread_mutex_lock(&m.bql.mutex)
            bh_schedule(bh, &other)
            bh_schedule(bh, &other)
            bh_schedule(bh, &other)
            bh_schedule(cancelled, &other)
            cancelled_ok = bh_cancel(cancelled)
            bh_schedule(idle, &other)
            pthread_mutex_unlock(&m.bql.mutex)
            usleep(80000)
            loop_stop_join(l)
        return {"reads_while_gated": reads_while_gated, "reads": st.reads, "bytes_read": st.bytes_read,
                "bh_runs": st.bh_runs, "idle_runs": st.idle_runs, "cancelled_runs": st.cancelled_runs,
                "cancel_returned": cancelled_ok, "timer_order": [st.timer_order[i] for i in range(min(4, st.ntimer_fired))],
                "timers_fired": st.ntimer_fired, "iterations": l.iterations}
    finally:
        loop_stop_join(l)
        loop_destroy(l)
        free(l)
        free(m)
        os.close(r)
        os.close(w)


def bench_record_cost(uint64_t n=2000000):
    """Measure the tracer's cost on the calling thread, in ns.

    Returns a dict: ``timestamp_ns`` (one ``ks_now()``), ``record_ns`` (reserve,
    fill and commit of one 64-byte record, timestamps excluded) and
    ``lock_record_ns`` (what the lock path adds per acquisition when recording:
    three timestamps plus the record).  The ring is emptied by this thread
    every 32768 records, standing in for the drain.
    """
    # the ring is allocated as the Tracer allocates its rings (64-byte aligned)
    cdef ks_ring *ring = NULL
    cdef void *mem = NULL
    cdef uint64_t i, cap = 1 << 16
    cdef int64_t t0, t1, t2, t3, a = 0, b = 0, c = 0
    if posix_memalign(&mem, 64, sizeof(ks_ring)) != 0:
        raise MemoryError()
    ring = <ks_ring *>mem
    memset(ring, 0, sizeof(ks_ring))
    if posix_memalign(&mem, 64, cap * sizeof(ks_record)) != 0:
        free(ring)
        raise MemoryError()
    memset(mem, 0, cap * sizeof(ks_record))
    ring.buf = <ks_record *>mem
    ring.mask = cap - 1
    with nogil:
        t0 = ks_mono_ns()
        for i in range(n):
            a += ks_now()
        t1 = ks_mono_ns()
        for i in range(n):
            trace_lock(ring, 1, 0, 2, <int64_t>i, <int64_t>i, <int64_t>i, 0, 0)
            if (i & 32767) == 32767:
                ring.tail = ring.head
        t2 = ks_mono_ns()
        ring.tail = ring.head
        for i in range(n):
            b = ks_now()
            c = ks_now_ordered()
            trace_lock(ring, 1, 0, 2, b, c, ks_now(), 0, 0)
            if (i & 32767) == 32767:
                ring.tail = ring.head
        t3 = ks_mono_ns()
    free(ring.buf)
    free(ring)
    return {"timestamp_ns": (t1 - t0) / <double>n, "record_ns": (t2 - t1) / <double>n,
            "lock_record_ns": (t3 - t2) / <double>n, "records": n, "_sink": a & 1}


def record_writers_selftest():
    """Write one record of each type through the core's named writers, with
    distinct field values, and return them as drained (timestamps unconverted).

    Returns
    -------
    (numpy.ndarray, dict)
        Records of :data:`RECORD_DTYPE`, and per table the values passed to
        its writer by column name (what the trace must show).
    """
    cdef ks_ring ring
    cdef void *mem = NULL
    cdef ks_exit ex
    if posix_memalign(&mem, 64, 64 * sizeof(ks_record)) != 0:
        raise MemoryError()
    memset(&ring, 0, sizeof(ring))
    memset(mem, 0, 64 * sizeof(ks_record))
    ring.buf = <ks_record *>mem
    ring.mask = 63
    memset(&ex, 0, sizeof(ex))
    ex.vcpu = 3
    ex.reason = KVM_EXIT_MMIO
    ex.size = 4
    ex.is_write = 1
    ex.count = 1
    ex.device = 1
    ex.addr = 0xd0000010
    ex.data = 0xdeadbeef
    ex.exit_time = 1000
    trace_exit(&ring, 7, &ex, 1100)
    trace_lock(&ring, 8, 0, 2, 2000, 2100, 2200, 5, 1)
    trace_bh(&ring, 9, 1, 4, 3000, 3100, 3200, 1)
    trace_timer(&ring, 9, 0, 4000, 4100, 4200, 4300)
    trace_aio(&ring, 9, 77, KS_AIO_WRITE, 4096, 1024, -5, 6, 5000, 5100, 5200, 5300)
    trace_loop(&ring, 9, 42, -1, 6000, 6100, 3, 6200)
    trace_irq(&ring, 10, KS_IRQEV_ACK, 1, KS_VECTOR_BASE + 1, 2, 7000)
    out = np.empty(64, dtype=RECORD_DTYPE)
    cdef uint64_t n = ks_ring_pop(&ring, <ks_record *><size_t>out.ctypes.data, 64)
    free(mem)
    expected = {
        "exits": dict(thread=7, vcpu=3, reason="mmio", addr=0xd0000010, size=4, is_write=True,
                      data=0xdeadbeef, count=1, device=1, exit_ns=1000, entry_ns=1100),
        "locks": dict(thread=8, lock=0, callsite=2, request_ns=2000, acquired_ns=2100,
                      released_ns=2200, prev_owner=5, contended=True),
        "bh": dict(thread=9, bh=1, name=1, sched_thread=4, scheduled_ns=3000, run_ns=3100,
                   done_ns=3200, idle=True),
        "timers": dict(thread=9, timer=0, name=0, armed_ns=4000, expire_ns=4100, fire_ns=4200,
                       done_ns=4300),
        "aio": dict(thread=9, req=77, op="write", offset=4096, length=1024, result=-5,
                    submit_thread=6, submit_ns=5000, start_ns=5100, done_ns=5200, complete_ns=5300),
        "loop": dict(thread=9, iter=42, timeout_ns=-1, poll_enter_ns=6000, poll_exit_ns=6100,
                     nready=3, dispatch_end_ns=6200),
        "irqs": dict(thread=10, kind="ack", line=1, vector=KS_VECTOR_BASE + 1, vcpu=2, ts_ns=7000),
    }
    return out[:n], expected


def constants():
    """The core's codes for the trace format's enums, to check against kvmscope.traceformat."""
    return {
        "record_types": {"exit": KS_REC_EXIT, "lock": KS_REC_LOCK, "bh": KS_REC_BH,
                         "timer": KS_REC_TIMER, "aio": KS_REC_AIO, "loop": KS_REC_LOOP,
                         "irq": KS_REC_IRQ},
        "aio_ops": {"read": KS_AIO_READ, "write": KS_AIO_WRITE, "fsync": KS_AIO_FSYNC},
        "irq_kinds": {"raise": KS_IRQEV_RAISE, "inject": KS_IRQEV_INJECT, "kick": KS_IRQEV_KICK,
                      "window": KS_IRQEV_WINDOW, "ack": KS_IRQEV_ACK},
        "exit_reasons": {"unknown": KVM_EXIT_UNKNOWN, "exception": KVM_EXIT_EXCEPTION,
                         "io": KVM_EXIT_IO, "hypercall": KVM_EXIT_HYPERCALL, "debug": KVM_EXIT_DEBUG,
                         "hlt": KVM_EXIT_HLT, "mmio": KVM_EXIT_MMIO,
                         "irq_window_open": KVM_EXIT_IRQ_WINDOW_OPEN, "shutdown": KVM_EXIT_SHUTDOWN,
                         "fail_entry": KVM_EXIT_FAIL_ENTRY, "intr": KVM_EXIT_INTR,
                         "internal_error": KVM_EXIT_INTERNAL_ERROR,
                         "system_event": KVM_EXIT_SYSTEM_EVENT},
        "device_unassigned": UNASSIGNED,
        "device_not_io": NOT_IO,
        "record_size": sizeof(ks_record),
    }
