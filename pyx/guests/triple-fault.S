# triple-fault: loads an empty IDT and raises #UD, so the CPU can deliver
# neither it nor the double fault: a triple fault (KVM_EXIT_SHUTDOWN).
# (ud2 rather than int3: KVM's emulator reports a software interrupt through
# an empty IDT as an emulation failure instead of a shutdown.)
        .include "common.inc"
        GUEST_ENTRY
        lidt idt_empty
        ud2
        jmp .
        .p2align 3
idt_empty:
        .word 0
        .long 0
        GUEST_GDT
