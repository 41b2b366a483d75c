# The bus (PIO and MMIO regions) and the device models of the board every guest sees.

# Board layout; the guests' common.inc holds the same numbers.
PARAMS_ADDR = 0x1000
CODE_ADDR = 0x10000
CODE_MAX = 0x30000
STACK_TOP = 0x80000
STACK_PER_VCPU = 0x1000
DEBUG_PORT = 0x80
EXIT_PORT = 0x501
SERIAL_PORT = 0x3f8
SCRATCH_MMIO = 0xd0000000
SCRATCH_SIZE = 0x1000
cdef uint32_t UNASSIGNED = 0xffffffff     # `device` of an access no region claimed
cdef uint32_t NOT_IO = 0xfffffffe         # `device` of a non-I/O exit


cdef inline int bus_find(ks_machine *m, int space, uint64_t addr, uint32_t size) noexcept nogil:
    """Index of the region that holds [addr, addr+size), or -1."""
    cdef int i
    cdef ks_region *r
    for i in range(m.nregions):
        r = &m.regions[i]
        if r.space == space and addr >= r.base and addr - r.base < r.size and size <= r.size - (addr - r.base):
            return i
    return -1


cdef inline uint64_t load_le(const uint8_t *data, uint32_t size) noexcept nogil:
    cdef uint64_t v = 0
    if size > 8:
        size = 8
    memcpy(&v, data, size)
    return v


cdef inline void store_le(uint8_t *data, uint32_t size, uint64_t v) noexcept nogil:
    if size > 8:
        size = 8
    memcpy(data, &v, size)


cdef inline void machine_request_stop(ks_machine *m, ks_vcpu *self_vcpu) noexcept nogil:
    """Ask every vCPU to leave KVM_RUN and stop (callable from any thread)."""
    cdef int i
    cdef ks_vcpu *v
    ks_store_release_int(&m.stop, 1)
    for i in range(m.nvcpus):
        v = m.vcpus[i]
        if v != self_vcpu and v.started and ks_load_acquire_int(&v.state) != KS_VCPU_DONE:
            pthread_kill(v.pthread, SIGUSR1)


# ---- debug port: the target of pio-storm ---------------------------------
cdef int debugport__access(void *opaque, ks_vcpu *vcpu, uint64_t offset, uint8_t *data,
                           uint32_t size, int is_write) noexcept nogil:
    cdef ks_machine *m = <ks_machine *>opaque
    if is_write:
        m.debugport_last = data[0]
        m.debugport_writes += 1
    else:
        memset(data, m.debugport_last, size)
    return 0


# ---- exit device: a guest ends its vCPU's run with a status ----------------
cdef int exitdev__access(void *opaque, ks_vcpu *vcpu, uint64_t offset, uint8_t *data,
                         uint32_t size, int is_write) noexcept nogil:
    if is_write and offset == 0:
        vcpu.exit_status = <int>load_le(data, size)
        vcpu.finished_by_guest = 1
    elif not is_write:
        memset(data, 0, size)
    return 0


# ---- serial console: 16550-style transmit only ------------------------------
cdef void console__flush_locked(ks_machine *m) noexcept nogil:
    cdef int i, n = m.console_line_len
    cdef uint64_t room
    if n == 0:
        return
    for i in range(2):
        if m.console_fds[i] >= 0:
            write(m.console_fds[i], m.console_line, n)
    room = KS_CONSOLE_CAP - m.console_len
    if room > <uint64_t>n:
        room = n
    memcpy(m.console_capture + m.console_len, m.console_line, room)
    m.console_len += room
    m.console_line_len = 0


cdef int serial__access(void *opaque, ks_vcpu *vcpu, uint64_t offset, uint8_t *data,
                        uint32_t size, int is_write) noexcept nogil:
    cdef ks_machine *m = <ks_machine *>opaque
    if is_write:
        if offset == 0:
            m.console_line[m.console_line_len] = data[0]
            m.console_line_len += 1
            if data[0] == 10 or m.console_line_len >= <int>sizeof(m.console_line):
                console__flush_locked(m)
    else:
        memset(data, 0, size)
        if offset == 5:
            data[0] = 0x60      # LSR: transmitter holding register and shifter empty
    return 0


# ---- scratch MMIO device: a page of read/write registers -------------------
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
