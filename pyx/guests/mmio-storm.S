# mmio-storm: P_ITERATIONS rounds of a 32-bit MMIO write then read-back of this
# vCPU's scratch register; exits with the number of read-backs that differed.
        .include "common.inc"
        GUEST_ENTRY
        lea SCRATCH_MMIO(,%eax,SCRATCH_REGISTER_BYTES), %edi  # this vCPU's register
        mov P_SEED, %ebx
        xor %eax, %ebx                          # per-vCPU value stream
        mov P_ITERATIONS, %ecx
        xor %ebp, %ebp                          # mismatches
        test %ecx, %ecx
        jz 3f
1:      imul $1664525, %ebx, %ebx               # LCG step
        add $1013904223, %ebx
        mov %ebx, (%edi)
        mov (%edi), %eax
        cmp %eax, %ebx
        je 2f
        inc %ebp
2:      dec %ecx
        jnz 1b
3:      mov %ebp, %eax
        GUEST_EXIT
        GUEST_GDT
