# Scratch MMIO page (SCRATCH_MMIO): read/write 64-bit registers, any width.


cdef int scratch__access(void *opaque, ks_vcpu *vcpu, uint64_t offset, uint8_t *data,
                         uint32_t size, int is_write) noexcept nogil:
    cdef ks_machine *m = <ks_machine *>opaque
    if offset >= sizeof(m.scratch) or size > sizeof(m.scratch) - offset:
        return -1
    if is_write:
        memcpy(<uint8_t *>m.scratch + offset, data, size)
    else:
        memcpy(data, <uint8_t *>m.scratch + offset, size)
    return 0
