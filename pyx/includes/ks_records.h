/* One writer per trace record type: arguments name the fields, and each
 * writer fills the ring-record slots that kvmscope.traceformat.RECORD_LAYOUT
 * names for its table (tests/test_format.py writes one of each through the
 * core and reads it back).  Timestamps are raw clock units (0: none); the
 * drain converts them.  Written in C only to force inlining: a vCPU writes
 * two records per exit, and an out-of-line call with this many arguments
 * costs as much as the record itself. */
#ifndef KS_RECORDS_H
#define KS_RECORDS_H

#include "ks_rt.h"

#define KS_WRITER static inline __attribute__((always_inline)) void

/* The exit a vCPU is handling, written as an `exits` record at its next entry. */
typedef struct {
    int16_t vcpu;
    uint8_t reason;
    uint8_t size;
    uint8_t is_write;
    uint32_t count;
    uint32_t device;
    uint64_t addr;
    uint64_t data;
    int64_t exit_time;
} ks_exit;

KS_WRITER trace_exit(ks_ring *ring, uint16_t thread, const ks_exit *e, int64_t entry) {
    ks_ring_put(ring, KS_REC_EXIT, thread, /*b0*/ e->reason, /*b1*/ e->size, /*b2*/ e->is_write,
                /*h0*/ e->vcpu, /*w0*/ e->count, /*w1*/ e->device, /*q0*/ e->addr, /*q1*/ e->data,
                /*t0*/ e->exit_time, /*t1*/ entry, 0, 0);
}

KS_WRITER trace_lock(ks_ring *ring, uint16_t thread, uint32_t lock, uint32_t callsite,
                     int64_t request, int64_t acquired, int64_t released, int16_t prev_owner,
                     uint8_t contended) {
    ks_ring_put(ring, KS_REC_LOCK, thread, /*b0*/ contended, 0, 0, /*h0*/ prev_owner, /*w0*/ lock,
                /*w1*/ callsite, 0, 0, /*t0*/ request, /*t1*/ acquired, /*t2*/ released, 0);
}

KS_WRITER trace_bh(ks_ring *ring, uint16_t thread, uint32_t bh, int16_t sched_thread,
                   int64_t scheduled, int64_t run, int64_t done, uint8_t idle) {
    ks_ring_put(ring, KS_REC_BH, thread, /*b0*/ idle, 0, 0, /*h0*/ sched_thread, /*w0*/ bh, 0, 0, 0,
                /*t0*/ scheduled, /*t1*/ run, /*t2*/ done, 0);
}

KS_WRITER trace_timer(ks_ring *ring, uint16_t thread, uint32_t timer, int64_t armed, int64_t expire,
                      int64_t fire, int64_t done) {
    ks_ring_put(ring, KS_REC_TIMER, thread, 0, 0, 0, 0, /*w0*/ timer, 0, 0, 0,
                /*t0*/ armed, /*t1*/ expire, /*t2*/ fire, /*t3*/ done);
}

KS_WRITER trace_aio(ks_ring *ring, uint16_t thread, uint32_t req, uint8_t op, uint64_t offset,
                    uint64_t length, int32_t result, int16_t submit_thread, int64_t submit,
                    int64_t start, int64_t done, int64_t complete) {
    ks_ring_put(ring, KS_REC_AIO, thread, /*b0*/ op, 0, 0, /*h0*/ submit_thread, /*w0*/ req,
                /*w1*/ (uint32_t)result, /*q0*/ offset, /*q1*/ length,
                /*t0*/ submit, /*t1*/ start, /*t2*/ done, /*t3*/ complete);
}

KS_WRITER trace_loop(ks_ring *ring, uint16_t thread, uint64_t iteration, int64_t timeout_ns,
                     int64_t poll_enter, int64_t poll_exit, uint32_t nready, int64_t dispatch_end) {
    ks_ring_put(ring, KS_REC_LOOP, thread, 0, 0, 0, 0, /*w0*/ nready, 0, /*q0*/ iteration,
                /*q1*/ (uint64_t)timeout_ns, /*t0*/ poll_enter, /*t1*/ poll_exit,
                /*t2*/ dispatch_end, 0);
}

KS_WRITER trace_irq(ks_ring *ring, uint16_t thread, uint8_t kind, int32_t line, int32_t vector,
                    int16_t vcpu, int64_t ts) {
    ks_ring_put(ring, KS_REC_IRQ, thread, /*b0*/ kind, 0, 0, /*h0*/ vcpu, /*w0*/ (uint32_t)line,
                /*w1*/ (uint32_t)vector, 0, 0, /*t0*/ ts, 0, 0, 0);
}

#endif
