# C-level state of the kvmscope core (structs and limits), cimported by _core.pyx: threads, the instrumented lock, the bus, vCPUs, the machine.
from libc.stdint cimport uint8_t, uint16_t, int16_t, uint32_t, int32_t, uint64_t, int64_t
from includes.posix cimport pthread_t, pthread_mutex_t, pthread_cond_t
from includes.kvm cimport kvm_run
from includes.rt cimport ks_ring, ks_record, ks_clock_conv

cdef struct ks_vcpu
cdef struct ks_machine
cdef struct ks_loop
cdef struct ks_aio_req
cdef struct ks_aio_pool
cdef struct ks_bh
cdef struct ks_blk
cdef struct ks_timerdev

cdef enum:
    KS_MAX_THREADS = 256
    KS_MAX_VCPUS = 64
    KS_MAX_REGIONS = 32
    KS_MAX_CALLSITES = 32
    KS_MAX_LOCKS = 8
    KS_CONSOLE_CAP = 65536
    KS_EXIT_REASONS = 64
    KS_MAX_FDS = 16
    KS_MAX_BHS = 32
    KS_MAX_TIMERS = 128
    KS_MAX_AIO = 16
    KS_IRQ_SOURCES = 2
    KS_CONSOLE_BUF = 4096

    KS_CPU_FIELDS = 5

# What the kernel accounted to one thread over its run (threadcpu.pxi), in
# the order of CPU_FIELDS there: CPU time, time runnable but waiting for a
# CPU, times it was given a CPU, voluntary and involuntary context switches;
# -1 where the kernel does not say.  state 0 not begun, 1 running, 2 ended.
cdef struct ks_cpustat:
    int state
    int64_t v[KS_CPU_FIELDS]

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
    ks_cpustat cpu

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
    # userspace interrupt controller (--irqchip user): pending vectors, and
    # the condition a vCPU halted in userspace sleeps on
    uint64_t pending_irq[4]
    pthread_mutex_t halt_mutex
    pthread_cond_t halt_cond
    int in_halt

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
    # scratch MMIO device registers
    uint64_t scratch[512]
    uint8_t debugport_last
    uint64_t debugport_writes
    # event model
    ks_loop *loop
    ks_aio_pool *aio
    int irqchip_kernel
    int irqfds[KS_MAX_VCPUS][KS_IRQ_SOURCES]
    ks_bh *console_bh
    uint8_t console_buf[KS_CONSOLE_BUF]
    int console_buf_len
    ks_blk *blk
    ks_timerdev *timerdev


# ---- main loop ----------------------------------------------------------------
ctypedef void (*ks_cb)(void *opaque) noexcept nogil
ctypedef int (*ks_poll_cb)(void *opaque) noexcept nogil

cdef struct ks_fd_handler:
    int fd
    ks_cb read
    ks_cb write
    ks_poll_cb read_poll
    void *opaque

# A bottom half.  state: 0 idle, 1 being scheduled, 2 scheduled.
cdef struct ks_bh:
    uint32_t id
    ks_cb cb
    void *opaque
    int state
    int idle
    int64_t scheduled_raw
    int16_t sched_thread
    ks_loop *loop
    uint64_t runs

cdef struct ks_timer:
    uint32_t id
    ks_cb cb
    void *opaque
    int armed
    int64_t expire_raw
    int64_t armed_raw
    ks_loop *loop

cdef struct ks_loop:
    ks_machine *m
    ks_thread thr
    pthread_t pthread
    int started
    int notify_fd
    int stop
    uint64_t iterations
    int nhandlers
    ks_fd_handler handlers[KS_MAX_FDS]
    int nbhs
    ks_bh *bhs[KS_MAX_BHS]
    int ntimers
    ks_timer *timers[KS_MAX_TIMERS]
    uint32_t dispatch_callsite

# ---- AIO worker pool ----------------------------------------------------------
ctypedef void (*ks_aio_done_fn)(ks_aio_req *req) noexcept nogil

cdef struct ks_aio_req:
    uint32_t id
    uint8_t op
    int fd
    int64_t offset
    int64_t length
    uint8_t *buf
    int64_t result
    int64_t submit_raw
    int64_t start_raw
    int64_t done_raw
    int16_t submit_thread
    int16_t worker_thread
    ks_aio_done_fn complete
    void *opaque
    int vcpu
    ks_aio_req *next

cdef struct ks_aio_worker:
    ks_aio_pool *pool
    int index

cdef struct ks_aio_pool:
    ks_machine *m
    ks_aio_worker worker_args[KS_MAX_AIO]
    pthread_mutex_t mutex
    pthread_cond_t cond
    ks_aio_req *q_head
    ks_aio_req *q_tail
    ks_aio_req *done_head
    int efd
    int stop
    int nworkers
    pthread_t workers[KS_MAX_AIO]
    int started[KS_MAX_AIO]
    ks_thread thr[KS_MAX_AIO]
    uint32_t next_id
    ks_bh *completion_bh
    uint64_t submitted
    uint64_t completed

# ---- devices of the event model -------------------------------------------------
cdef struct ks_blk_bank:
    uint32_t sector
    uint32_t count
    uint32_t buf
    uint32_t status

cdef struct ks_blk:
    ks_machine *m
    int fd
    uint64_t size
    ks_blk_bank banks[KS_MAX_VCPUS]
    uint64_t requests
    uint64_t errors

cdef struct ks_timerdev_bank:
    ks_timerdev *dev
    int vcpu
    uint32_t period_us
    uint32_t ticks
    int waiting_ack
    int64_t next_expire_raw
    ks_timer *timer

cdef struct ks_timerdev:
    ks_machine *m
    ks_timerdev_bank banks[KS_MAX_VCPUS]
