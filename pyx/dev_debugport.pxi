# Debug port (DEBUG_PORT): the target of pio-storm.  A write stores a byte, a read
# returns the last one.


cdef int debugport__access(void *opaque, ks_vcpu *vcpu, uint64_t offset, uint8_t *data,
                           uint32_t size, int is_write) noexcept nogil:
    cdef ks_machine *m = <ks_machine *>opaque
    if is_write:
        m.debugport_last = data[0]
        m.debugport_writes += 1
    else:
        memset(data, m.debugport_last, size)
    return 0
