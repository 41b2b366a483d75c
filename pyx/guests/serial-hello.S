# serial-hello: vCPU 0 prints a greeting P_ITERATIONS times (at least once) on
# the serial port, polling the line status register; other vCPUs exit at once.
        .include "common.inc"
        GUEST_ENTRY
        test %eax, %eax
        jnz 9f
        mov P_ITERATIONS, %ebp
        test %ebp, %ebp
        jnz 1f
        inc %ebp
1:      mov $msg, %esi
2:      movb (%esi), %bl
        test %bl, %bl
        jz 4f
3:      mov $SERIAL_LSR_REG, %dx
        in %dx, %al
        test $SERIAL_LSR_THRE, %al              # transmitter holding register empty?
        jz 3b
        mov $SERIAL_THR_REG, %dx
        mov %bl, %al
        out %al, %dx
        inc %esi
        jmp 2b
4:      dec %ebp
        jnz 1b
9:      xor %eax, %eax
        GUEST_EXIT
msg:    .asciz "Hello from the kvmscope guest on the serial port!\n"
        GUEST_GDT
