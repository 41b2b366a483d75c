# C-level state of the kvmscope core (structs and limits), cimported by _core.pyx: threads, the instrumented lock, the bus, vCPUs, the machine.
from libc.stdint cimport uint8_t, uint16_t, int16_t, uint32_t, int32_t, uint64_t, int64_t
from includes.posix cimport pthread_t, pthread_mutex_t, pthread_cond_t
from includes.kvm cimport kvm_run
from includes.rt cimport ks_ring, ks_record, ks_clock_conv

cdef struct ks_vcpu
cdef struct ks_machine

cdef enum:
    KS_MAX_THREADS = 256
    KS_MAX_VCPUS = 64
    KS_MAX_REGIONS = 32
    KS_MAX_CALLSITES = 32
    KS_MAX_LOCKS = 8
    KS_CONSOLE_CAP = 65536
    KS_EXIT_REASONS = 64

# One traced thread: its trace ring (NULL when recording is off) and the
# always-on counters the end-of-run summary reads.
cdef struct ks_thread:
    uint16_t id
    ks_ring *ring
    long tid
    uint64_t lock_acquisitions
    uint64_t lock_contended
    int64_t lock_wait_raw
    int64_t lock_hold_raw

# Instrumented mutex.  The acquisition fields describe the current holder's
# acquisition; only the holder touches them, between lock and unlock.
cdef struct ks_lock:
    pthread_mutex_t mutex
    uint32_t id
    int32_t last_owner
    int64_t cur_request
    int64_t cur_acquired
    uint32_t cur_callsite
    int16_t cur_prev_owner
    uint8_t cur_contended
    int64_t inject_hold_raw[KS_MAX_CALLSITES]

ctypedef int (*ks_io_fn)(void *opaque, ks_vcpu *vcpu, uint64_t offset,
                         uint8_t *data, uint32_t size, int is_write) noexcept nogil

cdef enum ks_space:
    KS_SPACE_PIO = 0
    KS_SPACE_MMIO = 1

# A device region on the bus.
cdef struct ks_region:
    int space
    uint64_t base
    uint64_t size
    ks_io_fn fn
    void *opaque
    int lockless
    uint32_t callsite

cdef enum ks_vcpu_state:
    KS_VCPU_CREATED = 0
    KS_VCPU_RUNNING = 1
    KS_VCPU_DONE = 2

cdef struct ks_vcpu:
    int index
    int fd
    kvm_run *run
    size_t run_size
    pthread_t pthread
    int started
    int state
    int exit_status
    int finished_by_guest
    ks_thread thr
    ks_machine *m
    uint64_t exits_total
    uint64_t exits_by_reason[KS_EXIT_REASONS]
    # always on: time from each exit to the next KVM_RUN, per exit reason
    int64_t exit_time_raw[KS_EXIT_REASONS]
    int64_t exit_time_max_raw[KS_EXIT_REASONS]
    int64_t first_entry_ns
    int64_t last_exit_ns
    char errmsg[256]

cdef struct ks_machine:
    int vm_fd
    uint8_t *mem
    uint64_t mem_size
    int nvcpus
    ks_vcpu *vcpus[KS_MAX_VCPUS]
    int nregions
    ks_region regions[KS_MAX_REGIONS]
    ks_lock bql
    int tracing
    int stop            # read and written with ks_load_acquire_int / ks_store_release_int
    int running
    int error
    pthread_mutex_t done_mutex
    pthread_cond_t done_cond
    # console: captured bytes (first KS_CONSOLE_CAP) and the current line
    int console_fds[2]
    uint8_t console_capture[KS_CONSOLE_CAP]
    uint64_t console_len
    uint8_t console_line[256]
    int console_line_len
    # scratch MMIO device registers
    uint64_t scratch[512]
    uint8_t debugport_last
    uint64_t debugport_writes
