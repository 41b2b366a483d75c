# Serial console (SERIAL_PORT): 16550-style transmit; whole lines are written out by a
# main-loop bottom half (`serial:flush`).


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
        if offset == KS_SERIAL_REG_THR:
            if m.console_buf_len >= KS_CONSOLE_BUF:
                console__flush_locked(m)      # the main loop is behind: write inline
            m.console_buf[m.console_buf_len] = data[0]
            m.console_buf_len += 1
            if data[0] == 10:
                bh_schedule(m.console_bh, &vcpu.thr)
    else:
        memset(data, 0, size)
        if offset == KS_SERIAL_REG_LSR:
            data[0] = KS_SERIAL_LSR_THRE | KS_SERIAL_LSR_TEMT     # always ready
    return 0
