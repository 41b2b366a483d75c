# One writer per trace record type: arguments name the fields, and each writer
# fills the ring-record slots that kvmscope.traceformat.RECORD_LAYOUT names for
# its table (tests/test_format.py writes one of each and reads it back).
# Timestamps are raw clock units (0: none); the drain converts them.

cdef inline ks_record *_record_new(ks_ring *ring, uint8_t rtype, uint16_t thread) noexcept nogil:
    """Reserve a zeroed record of ``rtype`` in ``ring``; NULL when not recording or dropped."""
    cdef ks_record *r
    if ring == NULL:
        return NULL
    r = ks_ring_reserve(ring)
    if r != NULL:
        memset(r, 0, sizeof(ks_record))
        r.type = rtype
        r.thread = thread
    return r


cdef inline void trace_exit(ks_ring *ring, uint16_t thread, const ks_exit *e, int64_t entry) noexcept nogil:
    cdef ks_record *r = _record_new(ring, KS_REC_EXIT, thread)
    if r == NULL:
        return
    r.h0 = e.vcpu
    r.b0 = e.reason
    r.q0 = e.addr
    r.b1 = e.size
    r.b2 = e.is_write
    r.q1 = e.data
    r.w0 = e.count
    r.w1 = e.device
    r.t0 = e.exit_time
    r.t1 = entry
    ks_ring_commit(ring)


cdef inline void trace_lock(ks_ring *ring, uint16_t thread, uint32_t lock, uint32_t callsite,
                            int64_t request, int64_t acquired, int64_t released,
                            int16_t prev_owner, uint8_t contended) noexcept nogil:
    cdef ks_record *r = _record_new(ring, KS_REC_LOCK, thread)
    if r == NULL:
        return
    r.w0 = lock
    r.w1 = callsite
    r.t0 = request
    r.t1 = acquired
    r.t2 = released
    r.h0 = prev_owner
    r.b0 = contended
    ks_ring_commit(ring)


cdef inline void trace_bh(ks_ring *ring, uint16_t thread, uint32_t bh, int16_t sched_thread,
                          int64_t scheduled, int64_t run, int64_t done, uint8_t idle) noexcept nogil:
    cdef ks_record *r = _record_new(ring, KS_REC_BH, thread)
    if r == NULL:
        return
    r.w0 = bh
    r.h0 = sched_thread
    r.t0 = scheduled
    r.t1 = run
    r.t2 = done
    r.b0 = idle
    ks_ring_commit(ring)


cdef inline void trace_timer(ks_ring *ring, uint16_t thread, uint32_t timer, int64_t armed,
                             int64_t expire, int64_t fire, int64_t done) noexcept nogil:
    cdef ks_record *r = _record_new(ring, KS_REC_TIMER, thread)
    if r == NULL:
        return
    r.w0 = timer
    r.t0 = armed
    r.t1 = expire
    r.t2 = fire
    r.t3 = done
    ks_ring_commit(ring)


cdef inline void trace_aio(ks_ring *ring, uint16_t thread, uint32_t req, uint8_t op,
                           uint64_t offset, uint64_t length, int32_t result, int16_t submit_thread,
                           int64_t submit, int64_t start, int64_t done, int64_t complete) noexcept nogil:
    cdef ks_record *r = _record_new(ring, KS_REC_AIO, thread)
    if r == NULL:
        return
    r.w0 = req
    r.b0 = op
    r.q0 = offset
    r.q1 = length
    r.w1 = <uint32_t>result
    r.h0 = submit_thread
    r.t0 = submit
    r.t1 = start
    r.t2 = done
    r.t3 = complete
    ks_ring_commit(ring)


cdef inline void trace_loop(ks_ring *ring, uint16_t thread, uint64_t iteration, int64_t timeout_ns,
                            int64_t poll_enter, int64_t poll_exit, uint32_t nready,
                            int64_t dispatch_end) noexcept nogil:
    cdef ks_record *r = _record_new(ring, KS_REC_LOOP, thread)
    if r == NULL:
        return
    r.q0 = iteration
    r.q1 = <uint64_t>timeout_ns
    r.t0 = poll_enter
    r.t1 = poll_exit
    r.w0 = nready
    r.t2 = dispatch_end
    ks_ring_commit(ring)


cdef inline void trace_irq(ks_ring *ring, uint16_t thread, uint8_t kind, int32_t line, int32_t vector,
                           int16_t vcpu, int64_t ts) noexcept nogil:
    cdef ks_record *r = _record_new(ring, KS_REC_IRQ, thread)
    if r == NULL:
        return
    r.b0 = kind
    r.w0 = <uint32_t>line
    r.w1 = <uint32_t>vector
    r.h0 = vcpu
    r.t0 = ts
    ks_ring_commit(ring)
