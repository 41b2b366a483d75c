# Timer device (TIMERDEV_PORT): periodic interrupts driven by main-loop timers.
# Registers (32-bit, banked per vCPU; the interrupt, TIMER_VECTOR, goes to the
# programming vCPU): TIMERDEV_REG_PERIOD, the period in us (0 stops), and
# TIMERDEV_REG_ACK, write: acknowledge the last tick, read: ticks raised so far.
# Like the MC146818 RTC's register C, the next tick is raised only once the
# guest acknowledged the previous one, so no tick is lost to the interrupt
# controller coalescing a tick that is still pending.


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
        if offset == KS_TIMERDEV_REG_PERIOD:
            bank.period_us = v
            bank.waiting_ack = 0
            if v == 0:
                timer_del_locked(bank.timer)
            else:
                period = timerdev__period_raw(v)
                bank.next_expire_raw = ks_now() + period
                timer_mod_locked(bank.timer, bank.next_expire_raw)
        elif offset == KS_TIMERDEV_REG_ACK and bank.waiting_ack and bank.period_us:
            bank.waiting_ack = 0
            timerdev__arm_next(bank, timerdev__period_raw(bank.period_us))
    else:
        store_le(data, size, bank.ticks if offset == KS_TIMERDEV_REG_ACK else bank.period_us)
    return 0
