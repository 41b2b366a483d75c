# C declarations from ks_rt.h: atomics, the run clock, trace records and rings, the kick handler.
from libc.stdint cimport uint8_t, uint16_t, int16_t, uint32_t, uint64_t, int64_t
from includes.kvm cimport kvm_run

cdef extern from "ks_rt.h" nogil:
    int KS_DEBUG
    int ks_load_acquire_int(const int *p)
    void ks_store_release_int(int *p, int v)
    uint64_t ks_load_relaxed_u64(const uint64_t *p)
    int ks_cas_int(int *p, int expected, int desired)
    void ks_or_u64(uint64_t *p, uint64_t v)
    uint64_t ks_and_u64(uint64_t *p, uint64_t v)
    uint64_t ks_load_acquire_u64(const uint64_t *p)
    void ks_add_relaxed_u64(uint64_t *p, uint64_t v)
    void ks_cpu_relax()
    long ks_gettid()

    int ks_clock_use_tsc
    int ks_drain_wanted
    void ks_clock_set_tsc(int on)
    void ks_set_tls_kvm_run(kvm_run *run)
    uint64_t ks_rdtsc_ordered()
    int64_t ks_mono_ns()
    int64_t ks_now()
    int64_t ks_now_ordered()
    uint64_t ks_rdtsc()
    ctypedef struct ks_clock_conv:
        int64_t raw0
        int64_t mono0
        uint64_t mult
    int64_t ks_raw_to_ns(const ks_clock_conv *c, int64_t raw)

    enum:
        KS_REC_NONE
        KS_REC_EXIT
        KS_REC_LOCK
        KS_REC_BH
        KS_REC_TIMER
        KS_REC_AIO
        KS_REC_LOOP
        KS_REC_IRQ

    ctypedef struct ks_record:
        uint8_t type
        uint8_t b0
        uint8_t b1
        uint8_t b2
        uint16_t thread
        int16_t h0
        uint32_t w0
        uint32_t w1
        uint64_t q0
        uint64_t q1
        int64_t t0
        int64_t t1
        int64_t t2
        int64_t t3

    ctypedef struct ks_gap:
        uint64_t seq
        uint64_t lost

    ctypedef struct ks_ring:
        uint64_t head
        ks_record *buf
        uint64_t mask
        uint64_t written
        uint64_t lost
        uint64_t stalls
        uint64_t unlogged_lost
        int lossless
        uint64_t tail

    void ks_ring_abandon(ks_ring *r)
    void ks_ring_put(ks_ring *r, uint8_t type, uint16_t thread, uint8_t b0, uint8_t b1, uint8_t b2,
                     int16_t h0, uint32_t w0, uint32_t w1, uint64_t q0, uint64_t q1,
                     int64_t t0, int64_t t1, int64_t t2, int64_t t3)
    int ks_ring_next_gap(ks_ring *r, uint64_t upto, ks_gap *out)

    ks_record *ks_ring_reserve(ks_ring *r)
    void ks_ring_commit(ks_ring *r)
    int ks_ring_push(ks_ring *r, const ks_record *rec)
    uint64_t ks_ring_pending(ks_ring *r)
    uint64_t ks_ring_pop(ks_ring *r, ks_record *out, uint64_t maxn)

    void ks_kick_handler(int sig)
