# pio-storm: P_ITERATIONS byte writes to the debug port, then exit with status 0.
        .include "common.inc"
        GUEST_ENTRY
        mov P_ITERATIONS, %ecx
        mov $DEBUG_PORT, %dx
        test %ecx, %ecx
        jz 2f
1:      mov %cl, %al
        out %al, %dx
        dec %ecx
        jnz 1b
2:      xor %eax, %eax
        GUEST_EXIT
        GUEST_GDT
