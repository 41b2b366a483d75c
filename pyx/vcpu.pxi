# vCPU threads: one pthread per vCPU looping on KVM_RUN without the GIL.

cdef extern from "<stdio.h>" nogil:
    int snprintf(char *buf, size_t n, const char *fmt, ...)

# Callsite ids fixed by the core; devices add theirs after these.
cdef enum:
    CALLSITE_VCPU_IO_UNASSIGNED = 0
    CALLSITE_VCPU_MMIO_UNASSIGNED = 1
BASE_CALLSITES = ["pio:unassigned", "mmio:unassigned"]


cdef inline void vcpu__fatal(ks_vcpu *v, const char *what_fmt, uint64_t detail) noexcept nogil:
    """Record why this vCPU cannot go on and flag the machine; ``what_fmt`` may format
    ``detail`` (printf ignores it when the format has no conversion)."""
    cdef char what[160]
    snprintf(what, sizeof(what), what_fmt, <unsigned long long>detail)
    snprintf(v.errmsg, sizeof(v.errmsg), "vcpu%d: %s at RIP 0x%llx",
             v.index, what, <unsigned long long>v.run.s.regs.regs.rip)
    v.m.error = 1


cdef inline int vcpu__dispatch(ks_vcpu *v, int space, uint64_t addr, uint8_t *data,
                               uint32_t size, uint32_t count, int is_write,
                               uint32_t *device) noexcept nogil:
    """Run the handler of the region at ``addr`` for ``count`` accesses of ``size`` bytes."""
    cdef ks_machine *m = v.m
    cdef int idx = bus_find(m, space, addr, size)
    cdef ks_region *r
    cdef uint32_t i, callsite
    cdef int rc = 0
    if idx < 0:
        device[0] = UNASSIGNED
        callsite = CALLSITE_VCPU_IO_UNASSIGNED if space == KS_SPACE_PIO else CALLSITE_VCPU_MMIO_UNASSIGNED
        lock_acquire(&m.bql, &v.thr, callsite)
        if not is_write:
            memset(data, 0xff, <size_t>size * count)
        lock_release(&m.bql, &v.thr)
        return 0
    r = &m.regions[idx]
    device[0] = idx
    if not r.lockless:
        lock_acquire(&m.bql, &v.thr, r.callsite)
    for i in range(count):
        rc = r.fn(r.opaque, v, addr - r.base, data + <size_t>i * size, size, is_write)
        if rc != 0:
            break
    if not r.lockless:
        lock_release(&m.bql, &v.thr)
    return rc


cdef inline int vcpu__handle_io(ks_vcpu *v, ks_exit *ex) noexcept nogil:
    cdef kvm_run *run = v.run
    cdef uint32_t size = run.io.size, count = run.io.count, device = UNASSIGNED
    cdef uint64_t off = run.io.data_offset
    cdef int is_write = run.io.direction == KVM_EXIT_IO_OUT
    cdef uint8_t *data
    # the kernel fills these, but a bad value must never make us touch memory
    # outside the kvm_run mapping
    if (size != 1 and size != 2 and size != 4) or count == 0 or off >= v.run_size \
            or <uint64_t>size * count > v.run_size - off:
        vcpu__fatal(v, "malformed KVM_EXIT_IO (size, count or data offset 0x%llx out of range)", off)
        return -1
    data = <uint8_t *>run + off
    if vcpu__dispatch(v, KS_SPACE_PIO, run.io.port, data, size, count, is_write, &device) != 0:
        vcpu__fatal(v, "device error on port 0x%llx", run.io.port)
        return -1
    ex.size = <uint8_t>size
    ex.is_write = <uint8_t>is_write
    ex.count = count
    ex.device = device
    ex.addr = run.io.port
    ex.data = load_le(data, size)
    return 0


cdef inline int vcpu__handle_mmio(ks_vcpu *v, ks_exit *ex) noexcept nogil:
    cdef kvm_run *run = v.run
    cdef uint32_t size = run.mmio.len, device = UNASSIGNED
    cdef int is_write = run.mmio.is_write
    if size == 0 or size > 8:
        vcpu__fatal(v, "malformed KVM_EXIT_MMIO (length %llu out of range)", size)
        return -1
    if vcpu__dispatch(v, KS_SPACE_MMIO, run.mmio.phys_addr, run.mmio.data, size, 1, is_write, &device) != 0:
        vcpu__fatal(v, "device error on MMIO access at 0x%llx", run.mmio.phys_addr)
        return -1
    ex.size = <uint8_t>size
    ex.is_write = <uint8_t>is_write
    ex.count = 1
    ex.device = device
    ex.addr = run.mmio.phys_addr
    ex.data = load_le(run.mmio.data, size)
    return 0


cdef void *vcpu__main(void *arg) noexcept nogil:
    cdef ks_vcpu *v = <ks_vcpu *>arg
    cdef ks_machine *m = v.m
    cdef kvm_run *run = v.run
    cdef ks_ring *ring = v.thr.ring
    cdef ks_exit ex
    cdef bint pending = False
    cdef int ret, err, done = 0
    cdef uint32_t reason, prev_reason = KS_EXIT_REASONS
    cdef int64_t t, t_exit = 0, d
    cdef sigset_t mask
    # Only the kick reaches this thread; Ctrl-C and friends go to the main thread.
    sigfillset(&mask)
    sigdelset(&mask, SIGUSR1)
    # SEGV, BUS, FPE, ILL, ABRT stay deliverable: they are synchronous faults
    sigdelset(&mask, SIGSEGV)
    sigdelset(&mask, SIGBUS)
    sigdelset(&mask, SIGFPE)
    sigdelset(&mask, SIGILL)
    sigdelset(&mask, SIGABRT)
    pthread_sigmask(SIG_SETMASK, &mask, NULL)
    ks_set_tls_kvm_run(run)
    v.thr.tid = ks_gettid()
    run.kvm_valid_regs = KVM_SYNC_X86_REGS
    memset(&ex, 0, sizeof(ex))
    v.first_entry_ns = ks_mono_ns()
    cpustat__begin(&v.thr)
    while not done:
        if ks_load_acquire_int(&m.stop):
            break
        # Exit and entry times are taken with recording off too: they feed
        # the always-on per-reason exit time aggregates.
        t = ks_now()
        if prev_reason < KS_EXIT_REASONS:
            d = t - t_exit
            v.exit_time_raw[prev_reason] += d
            if d > v.exit_time_max_raw[prev_reason]:
                v.exit_time_max_raw[prev_reason] = d
        if pending:
            trace_exit(ring, v.thr.id, &ex, t)
            pending = False
        if not m.irqchip_kernel and irq_user_before_run(v) != 0:
            vcpu__fatal(v, "KVM_INTERRUPT failed (vector pending: %llu)", 1)
            break
        ret = ioctl(v.fd, KVM_RUN, 0)
        t_exit = ks_now()
        if ring != NULL:
            memset(&ex, 0, sizeof(ex))
            ex.vcpu = v.index
            ex.device = NOT_IO
            ex.exit_time = t_exit
            pending = True
        v.exits_total += 1
        if ret < 0:
            err = errno
            if err == EINTR or err == EAGAIN:
                # a kick: KVM_RUN returned before or after entering the guest
                run.immediate_exit = 0
                v.exits_by_reason[KVM_EXIT_INTR] += 1
                prev_reason = KVM_EXIT_INTR
                ex.reason = KVM_EXIT_INTR
                continue
            snprintf(v.errmsg, sizeof(v.errmsg), "vcpu%d: KVM_RUN failed: %s", v.index, strerror(err))
            m.error = 1
            break
        reason = run.exit_reason
        prev_reason = reason if reason < KS_EXIT_REASONS else 0
        v.exits_by_reason[prev_reason] += 1
        ex.reason = <uint8_t>(reason if reason < 256 else 0)
        if reason == KVM_EXIT_IO:
            if vcpu__handle_io(v, &ex) != 0:
                break
            done = v.finished_by_guest
        elif reason == KVM_EXIT_MMIO:
            if vcpu__handle_mmio(v, &ex) != 0:
                break
            done = v.finished_by_guest
        elif reason == KVM_EXIT_HLT:
            # only the userspace irqchip sees HLT: sleep until an interrupt
            if m.irqchip_kernel or irq_user_halt(v):
                snprintf(v.errmsg, sizeof(v.errmsg),
                         "vcpu%d: guest halted with interrupts disabled (KVM_EXIT_HLT) at RIP 0x%llx",
                         v.index, <unsigned long long>run.s.regs.regs.rip)
                done = 1
        elif reason == KVM_EXIT_IRQ_WINDOW_OPEN:
            pass                # the pending vector is injected before the next entry
        elif reason == KVM_EXIT_SHUTDOWN:
            vcpu__fatal(v, "guest triple fault (KVM_EXIT_SHUTDOWN)", 0)
            break
        elif reason == KVM_EXIT_INTERNAL_ERROR:
            vcpu__fatal(v, "KVM internal error (KVM_EXIT_INTERNAL_ERROR, suberror %llu)", run.internal.suberror)
            break
        elif reason == KVM_EXIT_FAIL_ENTRY:
            vcpu__fatal(v, "VM entry failed (KVM_EXIT_FAIL_ENTRY, hardware reason 0x%llx)",
                        run.fail_entry.hardware_entry_failure_reason)
            break
        elif reason == KVM_EXIT_SYSTEM_EVENT:
            vcpu__fatal(v, "guest system event (KVM_EXIT_SYSTEM_EVENT, type %llu)", run.system_event.type)
            break
        else:
            vcpu__fatal(v, "unhandled exit reason %llu", reason)
            break
    if pending and ring != NULL:
        trace_exit(ring, v.thr.id, &ex, 0)      # last exit: never re-entered, entry_ns stays null
    v.last_exit_ns = ks_mono_ns()
    cpustat__end(&v.thr)
    if m.error:
        machine_request_stop(m, v)
    pthread_mutex_lock(&m.done_mutex)
    ks_store_release_int(&v.state, KS_VCPU_DONE)
    m.running -= 1
    pthread_cond_broadcast(&m.done_cond)
    pthread_mutex_unlock(&m.done_mutex)
    return NULL
