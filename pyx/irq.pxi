# Interrupt delivery: in-kernel irqchip (MSIs to each vCPU's local APIC through irqfd), or
# the userspace path (pending vector, a signal kick, KVM_INTERRUPT when the guest can take it).

# Interrupt sources (KS_IRQ_TIMER, KS_IRQ_BLK) raise vector KS_VECTOR_BASE + source;
# the board defines both (kvmscope.board, board.pxi).
cdef enum:
    KS_GSI_BASE = 32        # GSIs of the MSI routes (above the IOAPIC's 24 pins)

cdef enum:                  # `kind` of an irqs record: index into traceformat.IRQ_KINDS
    KS_IRQEV_RAISE = 0
    KS_IRQEV_INJECT = 1
    KS_IRQEV_KICK = 2
    KS_IRQEV_WINDOW = 3
    KS_IRQEV_ACK = 4

cdef extern from *:
    int __builtin_clzll(unsigned long long x) nogil


cdef inline int irq_gsi(int vcpu, int source) noexcept nogil:
    return KS_GSI_BASE + vcpu * KS_IRQ_SOURCES + source


cdef inline void irq__event(ks_thread *self, uint8_t kind, int line, int vector, int vcpu) noexcept nogil:
    trace_irq(self.ring, self.id, kind, line, vector, <int16_t>vcpu, ks_now())


cdef void irq_raise(ks_machine *m, ks_thread *self, int vcpu, int source) noexcept nogil:
    """Raise interrupt ``source`` on ``vcpu`` (edge-triggered), from any thread."""
    cdef uint64_t one = 1
    cdef ks_vcpu *v
    cdef int vector = KS_VECTOR_BASE + source
    if vcpu < 0 or vcpu >= m.nvcpus:
        return
    irq__event(self, KS_IRQEV_RAISE, irq_gsi(vcpu, source), vector, vcpu)
    if m.irqchip_kernel:
        write(m.irqfds[vcpu][source], &one, 8)
        return
    v = m.vcpus[vcpu]
    ks_or_u64(&v.pending_irq[vector >> 6], (<uint64_t>1) << (vector & 63))
    pthread_mutex_lock(&v.halt_mutex)
    if v.in_halt:
        pthread_cond_signal(&v.halt_cond)
        pthread_mutex_unlock(&v.halt_mutex)
        return
    pthread_mutex_unlock(&v.halt_mutex)
    if self != &v.thr and v.started:
        # out of KVM_RUN so that the vector is injected at the next entry
        irq__event(self, KS_IRQEV_KICK, -1, vector, vcpu)
        pthread_kill(v.pthread, SIGUSR1)


cdef inline int irq__highest_pending(ks_vcpu *v) noexcept nogil:
    cdef int w, b
    cdef uint64_t bits
    for w in range(3, -1, -1):
        bits = ks_load_acquire_u64(&v.pending_irq[w])
        if bits:
            b = 63 - __builtin_clzll(bits)
            return w * 64 + b
    return -1


cdef int irq_user_before_run(ks_vcpu *v) noexcept nogil:
    """Userspace irqchip, on the vCPU thread before KVM_RUN: inject one pending
    vector if the guest can take it, else ask KVM for an interrupt window."""
    cdef kvm_run *run = v.run
    cdef kvm_interrupt intr
    cdef int vector = irq__highest_pending(v)
    if vector < 0:
        run.request_interrupt_window = 0
        return 0
    # KVM_INTERRUPT while the guest cannot take it hangs or triple-faults it
    if run.ready_for_interrupt_injection and run.if_flag:
        intr.irq = vector
        if ioctl(v.fd, KVM_INTERRUPT, &intr) < 0:
            return -1
        ks_and_u64(&v.pending_irq[vector >> 6], ~((<uint64_t>1) << (vector & 63)))
        irq__event(&v.thr, KS_IRQEV_INJECT, -1, vector, v.index)
        run.request_interrupt_window = 1 if irq__highest_pending(v) >= 0 else 0
    else:
        if not run.request_interrupt_window:
            irq__event(&v.thr, KS_IRQEV_WINDOW, -1, vector, v.index)
        run.request_interrupt_window = 1
    return 0


cdef int irq_user_halt(ks_vcpu *v) noexcept nogil:
    """Userspace irqchip, KVM_EXIT_HLT: sleep until an interrupt is pending or the run stops.
    Returns 1 when the guest halted with interrupts disabled (it can never wake)."""
    if not v.run.if_flag:
        return 1
    pthread_mutex_lock(&v.halt_mutex)
    v.in_halt = 1
    while irq__highest_pending(v) < 0 and not ks_load_acquire_int(&v.m.stop):
        pthread_cond_wait(&v.halt_cond, &v.halt_mutex)
    v.in_halt = 0
    pthread_mutex_unlock(&v.halt_mutex)
    return 0


cdef void irq_wake_halted(ks_machine *m) noexcept nogil:
    """Wake every vCPU sleeping in irq_user_halt (the run is stopping)."""
    cdef int i
    cdef ks_vcpu *v
    for i in range(m.nvcpus):
        v = m.vcpus[i]
        if v != NULL:
            pthread_mutex_lock(&v.halt_mutex)
            pthread_cond_broadcast(&v.halt_cond)
            pthread_mutex_unlock(&v.halt_mutex)


# ---- userspace local APIC stub: acknowledges (EOI) become trace events ----------
cdef int lapic_stub__access(void *opaque, ks_vcpu *vcpu, uint64_t offset, uint8_t *data,
                            uint32_t size, int is_write) noexcept nogil:
    if is_write:
        if offset == KS_LAPIC_REG_EOI:
            irq__event(&vcpu.thr, KS_IRQEV_ACK, -1, -1, vcpu.index)
    else:
        memset(data, 0, size)
    return 0
