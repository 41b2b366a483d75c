# disk-bad-dma: programs the block device with addresses, sectors, counts and
# commands that are out of range, expecting the error status for each, then
# one valid request; exits with the number of unexpected statuses (0 = the
# device refused every bad request and still works).
        .include "common.inc"
        .include "irq.inc"
        GUEST_ENTRY
        test %eax, %eax                         # vCPU 0 runs the cases; others end
        jz 0f
        xor %eax, %eax
        GUEST_EXIT
0:      PERCPU_BASE
        IDT_SETUP
        sti
        xor %ebx, %ebx                          # unexpected statuses
        mov $cases, %ebp
        # %ebp walks the table; PERCPU_BASE is recomputed for WAIT_BLK
1:      cmpl $0xffffffff, (%ebp)
        je 9f
        push %ebp
        mov 4(%ebp), %esi                       # sector
        cmp $0xfffffffe, %esi
        jne 2f
        mov $BLK_PORT+0x14, %dx                 # the image's size in sectors
        in %dx, %eax
        mov %eax, %esi
2:      mov 8(%ebp), %ecx                       # count
        mov 12(%ebp), %edi                      # buffer
        cmp $0xfffffffe, %edi
        jne 3f
        mov P_MEMSIZE, %edi                     # the last 256 bytes of RAM
        sub $256, %edi
3:      mov (%ebp), %eax                        # command
        push %eax
        xor %eax, %eax
        PERCPU_BASE
        pop %eax
        call blk_rw
        pop %ebp
        cmp 16(%ebp), %eax
        je 4f
        inc %ebx
4:      add $20, %ebp
        jmp 1b
9:      mov %ebx, %eax
        GUEST_EXIT
        .p2align 2
cases:  #       command sector      count   buffer      expected
        .long   1, 0,          1,      0xfffffffe, 0x12    # buffer crosses the end of RAM
        .long   1, 0,          1,      0xfffffe00, 0x12    # buffer far outside RAM
        .long   2, 0,          8,      0xfffffff0, 0x12    # write from outside RAM
        .long   1, 0xfffffffe, 1,      0x200000,   0x11    # sector just past the image
        .long   1, 0xffffffff, 2,      0x200000,   0x11    # sector number overflow
        .long   1, 0,          0,      0x200000,   0x14    # zero sectors
        .long   1, 0,          100000, 0x200000,   0x14    # too many sectors
        .long   7, 0,          1,      0x200000,   0x10    # unknown command
        .long   2, 0,          1,      0x200000,   0       # a valid write still works
        .long   1, 0,          1,      0x200000,   0       # and a valid read
        .long   0xffffffff
        IRQ_CODE
        GUEST_GDT
