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
    if not m.irqchip_kernel:
        irq_wake_halted(m)
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


# ---- serial console: 16550-style transmit; output written by the main loop ------
cdef void console__flush_locked(ks_machine *m) noexcept nogil:
    """Write the buffered console bytes out (BQL held, or all threads stopped)."""
    cdef int i, n = m.console_buf_len
    cdef uint64_t room
    if n == 0:
        return
    for i in range(2):
        if m.console_fds[i] >= 0:
            write(m.console_fds[i], m.console_buf, n)
    room = KS_CONSOLE_CAP - m.console_len
    if room > <uint64_t>n:
        room = n
    memcpy(m.console_capture + m.console_len, m.console_buf, room)
    m.console_len += room
    m.console_buf_len = 0


cdef void console__flush_bh(void *opaque) noexcept nogil:
    console__flush_locked(<ks_machine *>opaque)


cdef int serial__access(void *opaque, ks_vcpu *vcpu, uint64_t offset, uint8_t *data,
                        uint32_t size, int is_write) noexcept nogil:
    cdef ks_machine *m = <ks_machine *>opaque
    if is_write:
        if offset == 0:
            if m.console_buf_len >= KS_CONSOLE_BUF:
                console__flush_locked(m)      # the main loop is behind: write inline
            m.console_buf[m.console_buf_len] = data[0]
            m.console_buf_len += 1
            if data[0] == 10:
                bh_schedule(m.console_bh, &vcpu.thr)
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


# ---- block device: DMA between guest RAM and a disk image through the AIO pool ----
# Registers (32-bit, banked per vCPU: each vCPU has its own request slot):
#   0x00 command (write: 1 read, 2 write, 3 flush; starts the request)
#   0x04 sector  0x08 count (512-byte sectors)  0x0c guest buffer address
#   0x10 status (read): 0 done, 1 busy (a command written then is refused and
#        leaves it busy), >= 0x10 error
# Every command ends with the blk interrupt on the issuing vCPU.
cdef enum:
    KS_BLK_SECTOR = 512
    KS_BLK_MAX_SECTORS = 256
BLK_PORT = 0x560
BLK_SECTOR = KS_BLK_SECTOR
BLK_MAX_SECTORS = KS_BLK_MAX_SECTORS
BLK_STATUS = {"ok": 0, "busy": 1, "bad_command": 0x10, "bad_range": 0x11,
              "bad_dma": 0x12, "io_error": 0x13, "bad_count": 0x14, "no_disk": 0x15}


cdef void blk__complete(ks_aio_req *req) noexcept nogil:
    cdef ks_blk *b = <ks_blk *>req.opaque
    cdef ks_blk_bank *bank = &b.banks[req.vcpu]
    if req.result == req.length:
        bank.status = 0
    else:
        bank.status = 0x13
        b.errors += 1
    irq_raise(b.m, &b.m.loop.thr, req.vcpu, KS_IRQ_BLK)


cdef inline void blk__fail(ks_blk *b, ks_vcpu *vcpu, uint32_t status) noexcept nogil:
    b.banks[vcpu.index].status = status
    b.errors += 1
    irq_raise(b.m, &vcpu.thr, vcpu.index, KS_IRQ_BLK)


cdef void blk__command(ks_blk *b, ks_vcpu *vcpu, uint32_t cmd) noexcept nogil:
    cdef ks_blk_bank *bank = &b.banks[vcpu.index]
    cdef uint64_t off, length
    cdef ks_aio_req *req
    b.requests += 1
    if bank.status == 1:
        # refused, and the status stays busy: one request in flight per bank,
        # so a guest cannot queue unbounded work (and host memory) behind it
        b.errors += 1
        irq_raise(b.m, &vcpu.thr, vcpu.index, KS_IRQ_BLK)
        return
    if b.fd < 0:
        blk__fail(b, vcpu, 0x15)
        return
    if cmd != KS_AIO_READ and cmd != KS_AIO_WRITE and cmd != KS_AIO_FSYNC:
        blk__fail(b, vcpu, 0x10)
        return
    off = <uint64_t>bank.sector * KS_BLK_SECTOR
    length = <uint64_t>bank.count * KS_BLK_SECTOR
    if cmd != KS_AIO_FSYNC:
        # every guest-supplied number is checked before the host touches memory
        if bank.count == 0 or bank.count > KS_BLK_MAX_SECTORS:
            blk__fail(b, vcpu, 0x14)
            return
        if off > b.size or length > b.size - off:
            blk__fail(b, vcpu, 0x11)
            return
        if bank.buf > b.m.mem_size or length > b.m.mem_size - bank.buf:
            blk__fail(b, vcpu, 0x12)
            return
    req = <ks_aio_req *>calloc(1, sizeof(ks_aio_req))
    if req == NULL:
        blk__fail(b, vcpu, 0x13)
        return
    req.op = <uint8_t>cmd
    req.fd = b.fd
    req.offset = off if cmd != KS_AIO_FSYNC else 0
    req.length = length if cmd != KS_AIO_FSYNC else 0
    req.buf = b.m.mem + bank.buf if cmd != KS_AIO_FSYNC else NULL
    req.complete = blk__complete
    req.opaque = b
    req.vcpu = vcpu.index
    bank.status = 1
    aio_submit(b.m.aio, req, &vcpu.thr)


cdef int blk__access(void *opaque, ks_vcpu *vcpu, uint64_t offset, uint8_t *data,
                     uint32_t size, int is_write) noexcept nogil:
    cdef ks_blk *b = <ks_blk *>opaque
    cdef ks_blk_bank *bank = &b.banks[vcpu.index]
    cdef uint32_t v = <uint32_t>load_le(data, size)
    if is_write:
        if offset == 0x00:
            blk__command(b, vcpu, v)
        elif offset == 0x04:
            bank.sector = v
        elif offset == 0x08:
            bank.count = v
        elif offset == 0x0c:
            bank.buf = v
    else:
        v = 0
        if offset == 0x04:
            v = bank.sector
        elif offset == 0x08:
            v = bank.count
        elif offset == 0x0c:
            v = bank.buf
        elif offset == 0x10:
            v = bank.status
        elif offset == 0x14:
            v = <uint32_t>(b.size // KS_BLK_SECTOR)
        store_le(data, size, v)
    return 0


# ---- timer device: periodic interrupts driven by main-loop timers ----------------
# Registers (32-bit, banked per vCPU; the interrupt goes to the programming vCPU):
#   0x00 period in us (write; 0 stops)
#   0x04 write: acknowledge the last tick; read: ticks raised so far
# Like the MC146818 RTC's register C, the next tick is raised only once the
# guest acknowledged the previous one, so no tick is lost to the interrupt
# controller coalescing a tick that is still pending.
TIMERDEV_PORT = 0x540


cdef inline int64_t timerdev__period_raw(uint32_t period_us) noexcept nogil:
    return <int64_t>(period_us * 1000.0 * raw_per_ns_c())


cdef inline void timerdev__arm_next(ks_timerdev_bank *bank, int64_t period) noexcept nogil:
    # next deadline on the period grid; after falling behind by more than a
    # period, skip ahead instead of firing a burst
    cdef int64_t now = ks_now()
    if bank.next_expire_raw < now:
        bank.next_expire_raw += ((now - bank.next_expire_raw) // period + 1) * period
    timer_mod_locked(bank.timer, bank.next_expire_raw)


cdef void timerdev__fire(void *opaque) noexcept nogil:
    cdef ks_timerdev_bank *bank = <ks_timerdev_bank *>opaque
    cdef ks_machine *m = bank.dev.m
    if bank.period_us == 0:
        return
    bank.ticks += 1
    bank.waiting_ack = 1
    bank.next_expire_raw = bank.timer.expire_raw + timerdev__period_raw(bank.period_us)
    irq_raise(m, &m.loop.thr, bank.vcpu, KS_IRQ_TIMER)


cdef int timerdev__access(void *opaque, ks_vcpu *vcpu, uint64_t offset, uint8_t *data,
                          uint32_t size, int is_write) noexcept nogil:
    cdef ks_timerdev *d = <ks_timerdev *>opaque
    cdef ks_timerdev_bank *bank = &d.banks[vcpu.index]
    cdef uint32_t v = <uint32_t>load_le(data, size)
    cdef int64_t period
    if is_write:
        if offset == 0:
            bank.period_us = v
            bank.waiting_ack = 0
            if v == 0:
                timer_del_locked(bank.timer)
            else:
                period = timerdev__period_raw(v)
                bank.next_expire_raw = ks_now() + period
                timer_mod_locked(bank.timer, bank.next_expire_raw)
        elif offset == 4 and bank.waiting_ack and bank.period_us:
            bank.waiting_ack = 0
            timerdev__arm_next(bank, timerdev__period_raw(bank.period_us))
    else:
        store_le(data, size, bank.ticks if offset == 4 else bank.period_us)
    return 0
