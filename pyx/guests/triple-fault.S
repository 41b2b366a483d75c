# triple-fault: loads an empty IDT and raises an exception, so the CPU cannot
# deliver it, nor the double fault: a triple fault (KVM_EXIT_SHUTDOWN).
        .include "common.inc"
        GUEST_ENTRY
        lidt idt_empty
        int3
        jmp .
        .p2align 3
idt_empty:
        .word 0
        .long 0
        GUEST_GDT
