# timer-hlt: each vCPU programs the timer device (P_TIMER_PERIOD_US), halts between
# timer interrupts until it has counted P_ITERATIONS ticks, stops the timer
# and exits with the number of ticks it counted.
        .include "common.inc"
        .include "irq.inc"
        GUEST_ENTRY
        PERCPU_BASE
        IDT_SETUP
        mov P_TIMER_PERIOD_US, %eax
        mov $TIMERDEV_PERIOD_REG, %dx
        out %eax, %dx
        mov P_ITERATIONS, %ecx
        sti
1:      cmp %ecx, PD_TICKS(%ebp)
        jae 2f
        hlt
        jmp 1b
2:      cli
        xor %eax, %eax
        mov $TIMERDEV_PERIOD_REG, %dx
        out %eax, %dx                           # stop the timer
        mov PD_TICKS(%ebp), %eax
        GUEST_EXIT
        IRQ_CODE
        GUEST_GDT
