# pio-storm for QEMU: each vCPU writes the debug port (0x80) n times, then
# finishes; the same workload as kvmscope's pio-storm (docs/qemu.md).
        .include "qemu.inc"
        GUEST_START
setup:  ret
main:
        mov iterations, %ecx
        mov $DEBUG_PORT, %dx
        test %ecx, %ecx
        jz 2f
1:      mov %cl, %al
        out %al, %dx
        dec %ecx
        jnz 1b
2:      xor %eax, %eax
        GUEST_FINISH
        QEMU_COMMON
        .data
iterations:     .long 100000
seed:           .long 1
port_burst:     .long 8
rtc_rate:       .long 7
