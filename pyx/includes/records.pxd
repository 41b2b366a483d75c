# C declarations from ks_records.h: one writer per trace record type, with named fields.
from libc.stdint cimport uint8_t, uint16_t, int16_t, uint32_t, int32_t, uint64_t, int64_t
from includes.rt cimport ks_ring

cdef extern from "ks_records.h" nogil:
    ctypedef struct ks_exit:
        int16_t vcpu
        uint8_t reason
        uint8_t size
        uint8_t is_write
        uint32_t count
        uint32_t device
        uint64_t addr
        uint64_t data
        int64_t exit_time

    void trace_exit(ks_ring *ring, uint16_t thread, const ks_exit *e, int64_t entry)
    void trace_lock(ks_ring *ring, uint16_t thread, uint32_t lock, uint32_t callsite,
                    int64_t request, int64_t acquired, int64_t released, int16_t prev_owner,
                    uint8_t contended)
    void trace_bh(ks_ring *ring, uint16_t thread, uint32_t bh, int16_t sched_thread,
                  int64_t scheduled, int64_t run, int64_t done, uint8_t idle)
    void trace_timer(ks_ring *ring, uint16_t thread, uint32_t timer, int64_t armed, int64_t expire,
                     int64_t fire, int64_t done)
    void trace_aio(ks_ring *ring, uint16_t thread, uint32_t req, uint8_t op, uint64_t offset,
                   uint64_t length, int32_t result, int16_t submit_thread, int64_t submit,
                   int64_t start, int64_t done, int64_t complete)
    void trace_loop(ks_ring *ring, uint16_t thread, uint64_t iteration, int64_t timeout_ns,
                    int64_t poll_enter, int64_t poll_exit, uint32_t nready, int64_t dispatch_end)
    void trace_irq(ks_ring *ring, uint16_t thread, uint8_t kind, int32_t line, int32_t vector,
                   int16_t vcpu, int64_t ts)
