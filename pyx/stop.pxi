# Stopping a run: the stop flag and the kicks that get every vCPU out of KVM_RUN.


cdef inline void machine_request_stop(ks_machine *m, ks_vcpu *self_vcpu) noexcept nogil:
    """Ask every vCPU to leave KVM_RUN and stop (callable from any thread)."""
    cdef int i
    cdef ks_vcpu *v
    ks_store_release_int(&m.stop, 1)
    if not m.irqchip_kernel:
        irq_wake_halted(m)
    for i in range(m.nvcpus):
        v = m.vcpus[i]
        if v != self_vcpu and v.started and ks_load_acquire_int(&v.state) != KS_VCPU_DONE:
            pthread_kill(v.pthread, SIGUSR1)
