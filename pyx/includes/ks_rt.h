/* kvmscope runtime helpers that Cython cannot express: C11-style atomics with
 * explicit memory order, ordered TSC reads, the per-thread trace ring (single
 * producer, single consumer) and the vCPU kick signal handler. */
#ifndef KS_RT_H
#define KS_RT_H

#include <stdint.h>
#include <string.h>
#include <time.h>
#include <sched.h>
#include <signal.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <linux/kvm.h>

/* Debug-only consistency checks cost nothing unless built with -DKS_DEBUG=1
 * (KVMSCOPE_DEBUG=1 pip install .). */
#ifndef KS_DEBUG
#define KS_DEBUG 0
#endif

/* ---- atomics ---------------------------------------------------------- */
static inline int ks_load_acquire_int(const volatile int *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void ks_store_release_int(volatile int *p, int v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline int ks_cas_int(volatile int *p, int expected, int desired) {
    return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}
static inline void ks_or_u64(volatile uint64_t *p, uint64_t v) { __atomic_fetch_or(p, v, __ATOMIC_ACQ_REL); }
static inline uint64_t ks_and_u64(volatile uint64_t *p, uint64_t v) { return __atomic_fetch_and(p, v, __ATOMIC_ACQ_REL); }
static inline uint64_t ks_load_acquire_u64(const volatile uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline uint64_t ks_load_relaxed_u64(const volatile uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void ks_add_relaxed_u64(volatile uint64_t *p, uint64_t v) {
    /* single writer: a plain load+store is enough, but it must not tear */
    __atomic_store_n(p, __atomic_load_n(p, __ATOMIC_RELAXED) + v, __ATOMIC_RELAXED);
}
static inline void ks_cpu_relax(void) { __builtin_ia32_pause(); }

static inline long ks_gettid(void) { return syscall(SYS_gettid); }

/* ---- clock ------------------------------------------------------------ */
/* One clock for the whole run.  With an invariant TSC the hot paths read the
 * TSC (lfence;rdtsc, ~8 ns) and the drain converts ticks to CLOCK_MONOTONIC
 * nanoseconds; otherwise they read CLOCK_MONOTONIC directly (~17 ns).
 * Lock intervals recorded on different CPUs never overlap: see ks_now() and
 * ks_now_ordered(). */
/* One translation unit (the extension) includes this header: statics suffice. */
static int ks_clock_use_tsc = 0;
static __thread struct kvm_run *volatile ks_tls_kvm_run;
/* Set by a producer that had to wait for room (lossless mode): the drain
 * should run now rather than at its next period. */
static int ks_drain_wanted = 0;

static inline void ks_clock_set_tsc(int on) { ks_clock_use_tsc = on; }
static inline void ks_set_tls_kvm_run(struct kvm_run *run) { ks_tls_kvm_run = run; }

static inline uint64_t ks_rdtsc(void) {
    uint32_t lo, hi;
    __asm__ __volatile__("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}
static inline uint64_t ks_rdtsc_ordered(void) {
    uint32_t lo, hi;
    __asm__ __volatile__("lfence; rdtsc" : "=a"(lo), "=d"(hi) :: "memory");
    return ((uint64_t)hi << 32) | lo;
}
static inline int64_t ks_mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}
/* Raw timestamp in clock units; never 0, since 0 marks "no timestamp".
 * rdtsc executes before any later store becomes visible (stores commit after
 * retirement), so a timestamp taken before a lock release never appears later
 * than the release. */
static inline int64_t ks_now(void) {
    if (ks_clock_use_tsc) return (int64_t)ks_rdtsc();
    return ks_mono_ns();
}
/* Timestamp that is not taken before earlier instructions complete: used right
 * after a lock is acquired, so the acquisition never appears to precede the
 * previous owner's release. */
static inline int64_t ks_now_ordered(void) {
    if (ks_clock_use_tsc) return (int64_t)ks_rdtsc_ordered();
    return ks_mono_ns();
}
/* Conversion state filled by calibration: ns = mono0 + (raw - raw0) * mult >> 32 */
typedef struct {
    int64_t raw0;
    int64_t mono0;
    uint64_t mult;
} ks_clock_conv;

static inline int64_t ks_raw_to_ns(const ks_clock_conv *c, int64_t raw) {
    if (raw == 0) return INT64_MIN;           /* null */
    if (!ks_clock_use_tsc) return raw;
    __int128 d = (__int128)(raw - c->raw0) * (__int128)c->mult;
    return c->mono0 + (int64_t)(d >> 32);
}

/* ---- trace records ---------------------------------------------------- */
enum {
    KS_REC_NONE = 0,
    KS_REC_EXIT = 1,
    KS_REC_LOCK = 2,
    KS_REC_BH = 3,
    KS_REC_TIMER = 4,
    KS_REC_AIO = 5,
    KS_REC_LOOP = 6,
    KS_REC_IRQ = 7,
};

/* One fixed-size record, 64 bytes (one cache line).  Field meaning depends on
 * `type`; the drain maps them to table columns (see tracer.pxi). */
typedef struct {
    uint8_t  type;
    uint8_t  b0;
    uint8_t  b1;
    uint8_t  b2;
    uint16_t thread;
    int16_t  h0;
    uint32_t w0;
    uint32_t w1;
    uint64_t q0;
    uint64_t q1;
    int64_t  t0;
    int64_t  t1;
    int64_t  t2;
    int64_t  t3;
} ks_record;

typedef char ks_record_is_64_bytes[(sizeof(ks_record) == 64) ? 1 : -1];

/* ---- per-thread ring -------------------------------------------------- */
/* Single producer (the thread it belongs to), single consumer (the drain).
 * head and tail live on separate cache lines so that producer and consumer
 * do not false-share; the producer keeps a cached copy of tail and rereads
 * the shared one only when the ring looks full.
 *
 * Dropped records leave a gap whose position the checker must know (a
 * violation next to a gap may be an artefact of the gap).  The producer notes
 * each gap in a small log when it next commits: (sequence number of the first
 * record after the gap, records dropped).  A gap can only close after the
 * drain freed room, and the drain reads the log after every pop, so at most a
 * couple of entries are ever outstanding. */
#define KS_GAP_LOG 16
typedef struct {
    uint64_t seq;                    /* first record committed after the gap */
    uint64_t lost;
} ks_gap;

typedef struct {
    volatile uint64_t head;          /* next slot to write; producer-owned */
    uint64_t cached_tail;
    ks_record *buf;
    uint64_t mask;
    volatile uint64_t written;       /* records committed */
    volatile uint64_t lost;          /* records dropped because the ring was full */
    volatile uint64_t stalls;        /* lossless mode: times the producer waited */
    uint64_t unlogged_lost;          /* dropped since the last gap-log entry; producer-owned */
    volatile uint64_t tail;          /* next slot to read; consumer-owned */
    volatile uint64_t gap_tail;      /* next gap-log entry to read; consumer-owned */
    char pad1[48];
    int lossless;
    /* Set once a recording is being abandoned (a second interrupt, or the
     * trace cannot be written any more): a lossless producer stops waiting
     * for a drain that will not come, and drops (and counts) instead. */
    volatile int abandoned;
    volatile uint64_t gap_head;      /* next gap-log entry to write; producer-owned */
    ks_gap gaps[KS_GAP_LOG];
} ks_ring;

typedef char ks_ring_tail_on_own_line[(__builtin_offsetof(ks_ring, tail) == 64) ? 1 : -1];

static inline void ks_ring_abandon(ks_ring *r) { __atomic_store_n(&r->abandoned, 1, __ATOMIC_RELEASE); }

static inline void ks_ring_drop(ks_ring *r) {
    ks_add_relaxed_u64(&r->lost, 1);
    r->unlogged_lost++;
}

/* Producer: log the gap that ends at sequence number h. */
static inline void ks_ring_log_gap(ks_ring *r, uint64_t h) {
    uint64_t gh = r->gap_head;
    if (gh - __atomic_load_n(&r->gap_tail, __ATOMIC_ACQUIRE) >= KS_GAP_LOG)
        return;                      /* log full: the gap stays open and is logged later */
    r->gaps[gh % KS_GAP_LOG].seq = h;
    r->gaps[gh % KS_GAP_LOG].lost = r->unlogged_lost;
    r->unlogged_lost = 0;
    __atomic_store_n(&r->gap_head, gh + 1, __ATOMIC_RELEASE);
}

static inline __attribute__((always_inline)) ks_record *ks_ring_reserve(ks_ring *r) {
    uint64_t h = r->head;
    if (__builtin_expect(h - r->cached_tail > r->mask, 0)) {
        r->cached_tail = __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE);
        while (h - r->cached_tail > r->mask) {
            if (!r->lossless || __atomic_load_n(&r->abandoned, __ATOMIC_ACQUIRE)) {
                ks_ring_drop(r);
                return NULL;
            }
            /* back-pressure: wait for the drain rather than drop */
            ks_add_relaxed_u64(&r->stalls, 1);
            __atomic_store_n(&ks_drain_wanted, 1, __ATOMIC_RELEASE);
            struct timespec ts = {0, 50000};
            nanosleep(&ts, NULL);
            r->cached_tail = __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE);
        }
        /* Only here can a gap close: a drop leaves cached_tail showing a full
         * ring, so the next reserve always comes through this path. */
        if (r->unlogged_lost != 0)
            ks_ring_log_gap(r, h);
    }
    return &r->buf[h & r->mask];
}

/* Consumer: take the next logged gap that closed before sequence `upto`
 * (records below it were popped).  Returns 0 when there is none. */
static inline int ks_ring_next_gap(ks_ring *r, uint64_t upto, ks_gap *out) {
    uint64_t gt = r->gap_tail;
    if (gt == __atomic_load_n(&r->gap_head, __ATOMIC_ACQUIRE))
        return 0;
    *out = r->gaps[gt % KS_GAP_LOG];
    if (out->seq >= upto)
        return 0;
    __atomic_store_n(&r->gap_tail, gt + 1, __ATOMIC_RELEASE);
    return 1;
}

static inline __attribute__((always_inline)) void ks_ring_commit(ks_ring *r) {
    uint64_t h = r->head + 1;
    __atomic_store_n(&r->head, h, __ATOMIC_RELEASE);
    ks_add_relaxed_u64(&r->written, 1);
    /* On a vCPU the next record comes an exit (~10 us) later, long after the
     * hardware prefetchers forgot the stream: fetch its line for writing now
     * so that the next record does not pay a cache miss. */
    __builtin_prefetch(&r->buf[h & r->mask], 1, 3);
}

static inline int ks_ring_push(ks_ring *r, const ks_record *rec) {
    ks_record *slot = ks_ring_reserve(r);
    if (!slot) return 0;
    memcpy(slot, rec, sizeof *slot);
    ks_ring_commit(r);
    return 1;
}

static inline uint64_t ks_ring_pending(ks_ring *r) {
    return __atomic_load_n(&r->head, __ATOMIC_ACQUIRE) - r->tail;
}

/* Consumer side: copy up to `max` records out, oldest first. */
static inline uint64_t ks_ring_pop(ks_ring *r, ks_record *out, uint64_t max) {
    uint64_t t = r->tail;
    uint64_t h = __atomic_load_n(&r->head, __ATOMIC_ACQUIRE);
    uint64_t n = h - t;
    if (KS_DEBUG && n > r->mask + 1) __builtin_trap();     /* producer overran the consumer */
    if (n > max) n = max;
    for (uint64_t i = 0; i < n; ) {
        uint64_t idx = (t + i) & r->mask;
        uint64_t run = r->mask + 1 - idx;
        if (run > n - i) run = n - i;
        memcpy(out + i, r->buf + idx, run * sizeof(ks_record));
        i += run;
    }
    __atomic_store_n(&r->tail, t + n, __ATOMIC_RELEASE);
    return n;
}

/* Append one record with every slot stored once (no memset: this runs twice
 * per exit).  Always inlined: with fifteen arguments an out-of-line call
 * would cost more than the record itself. */
static inline __attribute__((always_inline)) void ks_ring_put(
        ks_ring *r, uint8_t type, uint16_t thread, uint8_t b0, uint8_t b1, uint8_t b2, int16_t h0,
        uint32_t w0, uint32_t w1, uint64_t q0, uint64_t q1, int64_t t0, int64_t t1, int64_t t2,
        int64_t t3) {
    ks_record *rec;
    if (r == NULL) return;
    rec = ks_ring_reserve(r);
    if (rec == NULL) return;
    rec->type = type; rec->b0 = b0; rec->b1 = b1; rec->b2 = b2;
    rec->thread = thread; rec->h0 = h0; rec->w0 = w0; rec->w1 = w1;
    rec->q0 = q0; rec->q1 = q1;
    rec->t0 = t0; rec->t1 = t1; rec->t2 = t2; rec->t3 = t3;
    ks_ring_commit(r);
}

/* ---- vCPU kick -------------------------------------------------------- */
/* The kick signal handler sets immediate_exit on the kvm_run of the vCPU that
 * runs on the signalled thread, so a kick that lands just before KVM_RUN is
 * entered still makes it return at once (EINTR) instead of being lost. */

static inline void ks_kick_handler(int sig) {
    (void)sig;
    struct kvm_run *run = ks_tls_kvm_run;
    if (run) run->immediate_exit = 1;
}

#endif
