# Exit device (EXIT_PORT): a guest ends its vCPU's run with a status.


cdef int exitdev__access(void *opaque, ks_vcpu *vcpu, uint64_t offset, uint8_t *data,
                         uint32_t size, int is_write) noexcept nogil:
    if is_write and offset == KS_EXIT_REG_STATUS:
        vcpu.exit_status = <int>load_le(data, size)
        vcpu.finished_by_guest = 1
    elif not is_write:
        memset(data, 0, size)
    return 0
