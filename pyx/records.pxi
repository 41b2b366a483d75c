# One writer per trace record type: arguments name the fields, and each writer
# fills the ring-record slots that kvmscope.traceformat.RECORD_LAYOUT names for
# its table (tests/test_format.py writes one of each and reads it back).
# Timestamps are raw clock units (0: none); the drain converts them.  Each
# writer stores every slot of the record through ks_ring_put (ks_rt.h).

cdef inline void trace_exit(ks_ring *ring, uint16_t thread, const ks_exit *e, int64_t entry) noexcept nogil:
    ks_ring_put(ring, KS_REC_EXIT, thread, b0=e.reason, b1=e.size, b2=e.is_write, h0=e.vcpu,
                w0=e.count, w1=e.device, q0=e.addr, q1=e.data, t0=e.exit_time, t1=entry, t2=0, t3=0)


cdef inline void trace_lock(ks_ring *ring, uint16_t thread, uint32_t lock, uint32_t callsite,
                            int64_t request, int64_t acquired, int64_t released,
                            int16_t prev_owner, uint8_t contended) noexcept nogil:
    ks_ring_put(ring, KS_REC_LOCK, thread, b0=contended, b1=0, b2=0, h0=prev_owner, w0=lock,
                w1=callsite, q0=0, q1=0, t0=request, t1=acquired, t2=released, t3=0)


cdef inline void trace_bh(ks_ring *ring, uint16_t thread, uint32_t bh, int16_t sched_thread,
                          int64_t scheduled, int64_t run, int64_t done, uint8_t idle) noexcept nogil:
    ks_ring_put(ring, KS_REC_BH, thread, b0=idle, b1=0, b2=0, h0=sched_thread, w0=bh, w1=0,
                q0=0, q1=0, t0=scheduled, t1=run, t2=done, t3=0)


cdef inline void trace_timer(ks_ring *ring, uint16_t thread, uint32_t timer, int64_t armed,
                             int64_t expire, int64_t fire, int64_t done) noexcept nogil:
    ks_ring_put(ring, KS_REC_TIMER, thread, b0=0, b1=0, b2=0, h0=0, w0=timer, w1=0, q0=0, q1=0,
                t0=armed, t1=expire, t2=fire, t3=done)


cdef inline void trace_aio(ks_ring *ring, uint16_t thread, uint32_t req, uint8_t op,
                           uint64_t offset, uint64_t length, int32_t result, int16_t submit_thread,
                           int64_t submit, int64_t start, int64_t done, int64_t complete) noexcept nogil:
    ks_ring_put(ring, KS_REC_AIO, thread, b0=op, b1=0, b2=0, h0=submit_thread, w0=req,
                w1=<uint32_t>result, q0=offset, q1=length, t0=submit, t1=start, t2=done, t3=complete)


cdef inline void trace_loop(ks_ring *ring, uint16_t thread, uint64_t iteration, int64_t timeout_ns,
                            int64_t poll_enter, int64_t poll_exit, uint32_t nready,
                            int64_t dispatch_end) noexcept nogil:
    ks_ring_put(ring, KS_REC_LOOP, thread, b0=0, b1=0, b2=0, h0=0, w0=nready, w1=0, q0=iteration,
                q1=<uint64_t>timeout_ns, t0=poll_enter, t1=poll_exit, t2=dispatch_end, t3=0)


cdef inline void trace_irq(ks_ring *ring, uint16_t thread, uint8_t kind, int32_t line, int32_t vector,
                           int16_t vcpu, int64_t ts) noexcept nogil:
    ks_ring_put(ring, KS_REC_IRQ, thread, b0=kind, b1=0, b2=0, h0=vcpu, w0=<uint32_t>line,
                w1=<uint32_t>vector, q0=0, q1=0, t0=ts, t1=0, t2=0, t3=0)
