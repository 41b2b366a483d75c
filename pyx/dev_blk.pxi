# Block device (BLK_PORT): DMA between guest RAM and a disk image through the AIO pool.
# Registers (32-bit, banked per vCPU: each vCPU has its own request slot), kvmscope.board's
# BLK_REG_*: command (starts the request), sector, count (sectors of BLK_SECTOR_SIZE),
# guest buffer address, status (BLK_STATUS_*: busy while in flight; a command written
# then is refused and leaves it busy), image size in sectors.
# Every command ends with the blk interrupt (BLK_VECTOR) on the issuing vCPU.


cdef void blk__complete(ks_aio_req *req) noexcept nogil:
    cdef ks_blk *b = <ks_blk *>req.opaque
    cdef ks_blk_bank *bank = &b.banks[req.vcpu]
    if req.result == req.length:
        bank.status = KS_BLK_STATUS_OK
    else:
        bank.status = KS_BLK_STATUS_IO_ERROR
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
    cdef uint8_t op
    b.requests += 1
    if bank.status == KS_BLK_STATUS_BUSY:
        # refused, and the status stays busy: one request in flight per bank,
        # so a guest cannot queue unbounded work (and host memory) behind it
        b.errors += 1
        irq_raise(b.m, &vcpu.thr, vcpu.index, KS_IRQ_BLK)
        return
    if b.fd < 0:
        blk__fail(b, vcpu, KS_BLK_STATUS_NO_DISK)
        return
    if cmd == KS_BLK_CMD_READ:
        op = KS_AIO_READ
    elif cmd == KS_BLK_CMD_WRITE:
        op = KS_AIO_WRITE
    elif cmd == KS_BLK_CMD_FLUSH:
        op = KS_AIO_FSYNC
    else:
        blk__fail(b, vcpu, KS_BLK_STATUS_BAD_COMMAND)
        return
    off = <uint64_t>bank.sector * KS_BLK_SECTOR_SIZE
    length = <uint64_t>bank.count * KS_BLK_SECTOR_SIZE
    if op != KS_AIO_FSYNC:
        # every guest-supplied number is checked before the host touches memory
        if bank.count == 0 or bank.count > KS_BLK_MAX_SECTORS:
            blk__fail(b, vcpu, KS_BLK_STATUS_BAD_COUNT)
            return
        if off > b.size or length > b.size - off:
            blk__fail(b, vcpu, KS_BLK_STATUS_BAD_RANGE)
            return
        if bank.buf > b.m.mem_size or length > b.m.mem_size - bank.buf:
            blk__fail(b, vcpu, KS_BLK_STATUS_BAD_DMA)
            return
    req = <ks_aio_req *>calloc(1, sizeof(ks_aio_req))
    if req == NULL:
        blk__fail(b, vcpu, KS_BLK_STATUS_IO_ERROR)
        return
    req.op = op
    req.fd = b.fd
    req.offset = off if op != KS_AIO_FSYNC else 0
    req.length = length if op != KS_AIO_FSYNC else 0
    req.buf = b.m.mem + bank.buf if op != KS_AIO_FSYNC else NULL
    req.complete = blk__complete
    req.opaque = b
    req.vcpu = vcpu.index
    bank.status = KS_BLK_STATUS_BUSY
    aio_submit(b.m.aio, req, &vcpu.thr)


cdef int blk__access(void *opaque, ks_vcpu *vcpu, uint64_t offset, uint8_t *data,
                     uint32_t size, int is_write) noexcept nogil:
    cdef ks_blk *b = <ks_blk *>opaque
    cdef ks_blk_bank *bank = &b.banks[vcpu.index]
    cdef uint32_t v = <uint32_t>load_le(data, size)
    if is_write:
        if offset == KS_BLK_REG_CMD:
            blk__command(b, vcpu, v)
        elif offset == KS_BLK_REG_SECTOR:
            bank.sector = v
        elif offset == KS_BLK_REG_COUNT:
            bank.count = v
        elif offset == KS_BLK_REG_BUF:
            bank.buf = v
    else:
        v = 0
        if offset == KS_BLK_REG_SECTOR:
            v = bank.sector
        elif offset == KS_BLK_REG_COUNT:
            v = bank.count
        elif offset == KS_BLK_REG_BUF:
            v = bank.buf
        elif offset == KS_BLK_REG_STATUS:
            v = bank.status
        elif offset == KS_BLK_REG_SIZE:
            v = <uint32_t>(b.size // KS_BLK_SECTOR_SIZE)
        store_le(data, size, v)
    return 0
