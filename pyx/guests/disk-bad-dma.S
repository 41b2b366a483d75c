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
        mov $BLK_SIZE_REG, %dx                  # the image's size in sectors
        in %dx, %eax
        mov %eax, %esi
2:      mov 8(%ebp), %ecx                       # count
        mov 12(%ebp), %edi                      # buffer
        cmp $0xfffffffe, %edi
        jne 3f
        mov P_MEM_SIZE, %edi                    # the last 256 bytes of RAM
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
        .set RD, BLK_CMD_READ
        .set WR, BLK_CMD_WRITE
cases:  #       command sector      count   buffer      expected
        .long   RD, 0,          1,      0xfffffffe, BLK_STATUS_BAD_DMA      # buffer crosses the end of RAM
        .long   RD, 0,          1,      0xfffffe00, BLK_STATUS_BAD_DMA      # buffer far outside RAM
        .long   WR, 0,          8,      0xfffffff0, BLK_STATUS_BAD_DMA      # write from outside RAM
        .long   RD, 0xfffffffe, 1,      DMA_BASE,   BLK_STATUS_BAD_RANGE    # sector just past the image
        .long   RD, 0xffffffff, 2,      DMA_BASE,   BLK_STATUS_BAD_RANGE    # sector number overflow
        .long   RD, 0,          0,      DMA_BASE,   BLK_STATUS_BAD_COUNT    # zero sectors
        .long   RD, 0,          100000, DMA_BASE,   BLK_STATUS_BAD_COUNT    # too many sectors
        .long   7,  0,          1,      DMA_BASE,   BLK_STATUS_BAD_COMMAND  # unknown command
        .long   WR, 0,          1,      DMA_BASE,   BLK_STATUS_OK           # a valid write still works
        .long   RD, 0,          1,      DMA_BASE,   BLK_STATUS_OK           # and a valid read
        .long   0xffffffff
        IRQ_CODE
        GUEST_GDT
