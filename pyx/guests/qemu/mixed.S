# mixed for QEMU: the workload of kvmscope's mixed on QEMU's own devices
# (docs/qemu.md).  Each vCPU (at most two) makes n random block requests of
# 1-4 sectors over its own IDE disk (vCPU 0 the primary channel's master,
# vCPU 1 the secondary's) by bus-master DMA, halting until the completion
# interrupt, then writes the debug port burst= times; vCPU 0 also takes the
# RTC's periodic interrupt (rate=7: 512 Hz, a 1.95 ms period).  So the vCPUs,
# the main loop's timers and the thread pool's completions compete for the
# BQL.  Requests and data follow kvmscope's disk-io (docs/guests.md) with a
# region of 2048 sectors from the start of each disk (1 MiB, zeroed before
# the run): a write stamps every dword of a sector with pattern(sector,
# version), a read checks it.  Exit status: sectors read back wrong plus
# failed requests (all n when the vCPU's disk is missing).
        .include "qemu.inc"

        .set REGION, 2048                       # sectors per disk
        .set SECTOR, 512
        .set RTC_VECTOR, 0x30
        .set IDE_VECTOR, 0x31
        .set SPURIOUS, 0xff
        .set RTC_INDEX, 0x70
        .set RTC_DATA, 0x71
        .set RTC_A, 0x0a
        .set RTC_B, 0x0b
        .set RTC_C, 0x0c
        .set RTC_B_PIE, 0x40
        .set PCI_ADDR, 0xcf8
        .set PCI_DATA, 0xcfc
        .set IDE_PCI, 0x80000000 | (1 << 11) | (1 << 8)    # 00:01.1, PIIX IDE
        .set BM_DEFAULT, 0xc000                 # bus-master base if the firmware set none
        .set ATA_READ_DMA, 0xc8
        .set ATA_WRITE_DMA, 0xca
        .set ATA_ERR, 0x21                      # ERR | DF
        .set BM_START, 0x01
        .set BM_TO_MEMORY, 0x08
        .set BM_ERR, 0x02
        .set BM_CLEAR, 0x06                     # write 1 to clear IRQ and ERR
        .set LAPIC_LINT0, LAPIC + 0x350
        .set MAX_DISKS, 2

        GUEST_START

# setup (boot vCPU, before the others start): bus-master DMA on, interrupts
# routed through the IOAPIC (the 8259s masked), the IDT, the RTC ticking.
setup:
        mov $IDE_PCI | 0x20, %eax               # BAR4: bus-master registers
        mov $PCI_ADDR, %dx
        out %eax, %dx
        mov $PCI_DATA, %dx
        in %dx, %eax
        and $0xfffc, %eax
        jnz 1f
        mov $BM_DEFAULT | 1, %eax
        out %eax, %dx
        mov $BM_DEFAULT, %eax
1:      mov %eax, bm_base
        mov $IDE_PCI | 0x04, %eax               # command: I/O space and bus master
        mov $PCI_ADDR, %dx
        out %eax, %dx
        mov $PCI_DATA, %dx
        in %dx, %ax
        or $0x05, %ax
        out %ax, %dx
        mov $0xff, %al                          # mask both 8259s
        out %al, $0x21
        out %al, $0xa1
        movl $0x10000, LAPIC_LINT0              # no ExtINT from them either
        mov $8, %ecx                            # RTC -> vCPU 0
        mov $RTC_VECTOR, %eax
        xor %edx, %edx
        call ioapic_route
        mov $14, %ecx                           # primary IDE -> vCPU 0
        mov $IDE_VECTOR, %eax
        xor %edx, %edx
        call ioapic_route
        mov $15, %ecx                           # secondary IDE -> vCPU 1
        mov $IDE_VECTOR, %eax
        mov $1, %edx
        call ioapic_route
        call idt_setup
        mov $RTC_A, %al                         # periodic rate: 32768 >> (rate - 1) Hz
        out %al, $RTC_INDEX
        mov rtc_rate, %eax
        and $0x0f, %eax
        or $0x20, %al                           # 32.768 kHz time base
        out %al, $RTC_DATA
        mov $RTC_C, %al                         # clear a pending flag
        out %al, $RTC_INDEX
        in $RTC_DATA, %al
        ret

# ioapic_route: pin ECX -> vector EAX, edge, active high, physical APIC ID EDX.
ioapic_route:
        lea 0x11(,%ecx,2), %ecx
        mov %ecx, IOAPIC_SEL
        shl $24, %edx
        mov %edx, IOAPIC_WIN
        dec %ecx
        mov %ecx, IOAPIC_SEL
        mov %eax, IOAPIC_WIN
        ret

idt_setup:
        mov $idt, %edi
        mov $256, %ecx
        mov $isr_default, %edx
1:      call gate
        add $8, %edi
        loop 1b
        mov $isr_rtc, %edx
        mov $idt + RTC_VECTOR * 8, %edi
        call gate
        mov $isr_ide, %edx
        mov $idt + IDE_VECTOR * 8, %edi
        call gate
        mov $isr_spurious, %edx
        mov $idt + SPURIOUS * 8, %edi
        call gate
        ret

# gate: 32-bit interrupt gate at (%edi) for handler EDX; clobbers EAX, EBX.
gate:
        mov %edx, %eax
        and $0xffff, %eax
        or $0x08 << 16, %eax
        mov %eax, (%edi)
        mov %edx, %ebx
        and $0xffff0000, %ebx
        or $0x8e00, %ebx
        mov %ebx, 4(%edi)
        ret

# Return from an interrupt without IRET, which KVM's instruction emulator
# (that runs CPL0 guest code on some hosts) implements only in real mode:
# the frame [eip][cs][eflags] becomes [eflags][eip] for POPF; RET.
        .macro IRQ_RETURN
        push %eax
        mov 4(%esp), %eax
        xchg %eax, 12(%esp)
        mov %eax, 8(%esp)
        pop %eax
        add $4, %esp
        popf
        ret
        .endm

isr_rtc:
        push %eax
        mov $RTC_C, %al                         # reading register C acknowledges the tick
        out %al, $RTC_INDEX
        in $RTC_DATA, %al
        incl ticks
        movl $0, LAPIC_EOI
        pop %eax
        IRQ_RETURN

isr_ide:
        push %eax
        mov LAPIC_ID, %eax
        shr $24, %eax
        and $MAX_DISKS - 1, %eax
        movl $1, ide_done(,%eax,4)
        movl $0, LAPIC_EOI
        pop %eax
        IRQ_RETURN

isr_spurious:
        IRQ_RETURN

isr_default:                                    # an unexpected vector: stop QEMU with 0x7e
        mov $0x7e, %al
        mov $EXIT_PORT, %dx
        out %al, %dx
        cli
        hlt

# main: EAX = vCPU index.  Locals in EBP's frame.
        .set L_X, 0
        .set L_LEFT, 4
        .set L_BAD, 8
        .set L_S, 12
        .set L_CNT, 16
        .set L_CMD, 20
        .set L_IDX, 24
        .set L_PORT, 28                         # ATA command block
        .set L_BM, 32                           # this channel's bus-master registers
        .set L_BUF, 36
        .set L_VERS, 40
        .set L_SIZE, 44
main:
        sub $L_SIZE, %esp
        mov %esp, %ebp
        mov %eax, L_IDX(%ebp)
        movl $LAPIC_SVR_ENABLE, LAPIC_SVR
        movl $0, LAPIC_TPR
        lidt idt_desc
        movl $0, L_BAD(%ebp)
        cmp $MAX_DISKS, %eax
        jae .Lfinish                            # no disk for this vCPU
        mov $0x1f0, %ecx                        # primary or secondary channel
        test %eax, %eax
        jz 1f
        mov $0x170, %ecx
1:      mov %ecx, L_PORT(%ebp)
        mov %eax, %ecx
        shl $3, %ecx
        add bm_base, %ecx
        mov %ecx, L_BM(%ebp)
        mov %eax, %ecx
        shl $12, %ecx
        lea dma_buf(%ecx), %edx
        mov %edx, L_BUF(%ebp)
        mov %eax, %ecx
        shl $13, %ecx                           # REGION * 4
        lea versions(%ecx), %edx
        mov %edx, L_VERS(%ebp)
        imul $0x9e3779b9, %eax, %eax
        xor seed, %eax
        mov %eax, L_X(%ebp)
        mov iterations, %eax
        mov %eax, L_LEFT(%ebp)
        mov L_PORT(%ebp), %edx                  # a disk answers with DRDY: else every
        add $6, %edx                            # request fails (no interrupt would come)
        mov $0xe0, %al
        out %al, %dx
        inc %edx
        in %dx, %al
        cmp $0xff, %al
        je 1f
        test $0x40, %al
        jnz 3f
1:      mov iterations, %eax
        mov %eax, L_BAD(%ebp)
        jmp .Lfinish
3:      cmpl $0, L_IDX(%ebp)
        jne 2f
        mov $RTC_B, %al                         # vCPU 0: the RTC starts ticking
        out %al, $RTC_INDEX
        in $RTC_DATA, %al
        or $RTC_B_PIE, %al
        mov %al, %ah
        mov $RTC_B, %al
        out %al, $RTC_INDEX
        mov %ah, %al
        out %al, $RTC_DATA
2:      sti
.Lround:
        cmpl $0, L_LEFT(%ebp)
        je .Lend
        decl L_LEFT(%ebp)
        mov L_X(%ebp), %eax
        imul $1664525, %eax, %eax
        add $1013904223, %eax
        mov %eax, L_X(%ebp)
        xor %edx, %edx
        mov $REGION, %ecx
        divl %ecx                               # edx = x % region
        mov %edx, L_S(%ebp)
        mov L_X(%ebp), %ecx
        shr $8, %ecx
        and $3, %ecx
        inc %ecx
        mov $REGION, %eax
        sub %edx, %eax
        cmp %eax, %ecx
        jbe 1f
        mov %eax, %ecx
1:      mov %ecx, L_CNT(%ebp)
        testl $0x10000, L_X(%ebp)
        jz .Lread
        xor %ebx, %ebx                          # write: bump versions, stamp the buffer
2:      mov L_S(%ebp), %eax
        add %ebx, %eax
        mov L_VERS(%ebp), %edx
        incl (%edx,%eax,4)
        call pattern
        mov %ebx, %edi
        shl $9, %edi
        add L_BUF(%ebp), %edi
        mov $SECTOR / 4, %ecx
        rep stosl
        inc %ebx
        cmp L_CNT(%ebp), %ebx
        jb 2b
        movl $ATA_WRITE_DMA, L_CMD(%ebp)
        jmp .Lio
.Lread:
        movl $ATA_READ_DMA, L_CMD(%ebp)
.Lio:   call dma_request
        test %eax, %eax
        jz 3f
        incl L_BAD(%ebp)
        jmp .Lafter
3:      cmpl $ATA_READ_DMA, L_CMD(%ebp)
        jne .Lafter
        xor %ebx, %ebx                          # read: every dword must match
4:      mov L_S(%ebp), %eax
        add %ebx, %eax
        call pattern
        mov %ebx, %edi
        shl $9, %edi
        add L_BUF(%ebp), %edi
        mov $SECTOR / 4, %ecx
        repe scasl
        je 5f
        incl L_BAD(%ebp)
5:      inc %ebx
        cmp L_CNT(%ebp), %ebx
        jb 4b
.Lafter:
        mov port_burst, %ecx
        mov $DEBUG_PORT, %dx
        test %ecx, %ecx
        jz .Lround
6:      mov %cl, %al
        out %al, %dx
        dec %ecx
        jnz 6b
        jmp .Lround
.Lend:
        cli
        cmpl $0, L_IDX(%ebp)
        jne .Lfinish
        mov $RTC_B, %al                         # vCPU 0: stop the RTC's interrupt
        out %al, $RTC_INDEX
        in $RTC_DATA, %al
        and $~RTC_B_PIE, %al
        mov %al, %ah
        mov $RTC_B, %al
        out %al, $RTC_INDEX
        mov %ah, %al
        out %al, $RTC_DATA
.Lfinish:
        mov L_BAD(%ebp), %eax
        GUEST_FINISH

# dma_request: L_CMD for L_CNT sectors from L_S by bus-master DMA through
# L_BUF; halts until the completion interrupt.  EAX = 0 done, else failed.
dma_request:
        mov L_IDX(%ebp), %eax
        lea prd(,%eax,8), %edi
        mov L_BUF(%ebp), %eax
        mov %eax, (%edi)
        mov L_CNT(%ebp), %eax
        shl $9, %eax
        or $0x80000000, %eax                    # the table's last entry
        mov %eax, 4(%edi)
        mov L_BM(%ebp), %edx
        add $4, %edx
        mov %edi, %eax
        out %eax, %dx                           # PRD table address
        sub $2, %edx
        mov $BM_CLEAR, %al
        out %al, %dx
        mov L_PORT(%ebp), %edx
        add $2, %edx
        mov L_CNT(%ebp), %al
        out %al, %dx                            # sector count
        mov L_S(%ebp), %eax
        inc %edx
        out %al, %dx                            # LBA 0-7
        shr $8, %eax
        inc %edx
        out %al, %dx                            # LBA 8-15
        shr $8, %eax
        inc %edx
        out %al, %dx                            # LBA 16-23
        shr $8, %eax
        and $0x0f, %al
        or $0xe0, %al                           # LBA mode, master
        inc %edx
        out %al, %dx
        mov L_CMD(%ebp), %eax
        inc %edx
        out %al, %dx                            # command
        mov L_IDX(%ebp), %ebx
        movl $0, ide_done(,%ebx,4)
        mov $BM_START, %al
        cmpl $ATA_READ_DMA, L_CMD(%ebp)
        jne 1f
        or $BM_TO_MEMORY, %al
1:      mov L_BM(%ebp), %edx
        out %al, %dx                            # start the transfer
2:      cli                                     # sti; hlt: no wake-up lost in between
        cmpl $0, ide_done(,%ebx,4)
        jne 3f
        sti
        hlt
        jmp 2b
3:      sti
        mov L_BM(%ebp), %edx
        add $2, %edx
        in %dx, %al
        mov %eax, %ecx                          # bus-master status
        mov $BM_CLEAR, %al
        out %al, %dx
        sub $2, %edx
        xor %al, %al
        out %al, %dx                            # stop
        mov L_PORT(%ebp), %edx
        add $7, %edx
        in %dx, %al                             # ATA status (acknowledges the interrupt)
        and $ATA_ERR, %eax
        and $BM_ERR, %ecx
        or %ecx, %eax
        ret

# pattern: EAX = sector -> EAX = pattern(sector, its version).
pattern:
        push %edx
        push %ecx
        mov L_VERS(%ebp), %edx
        mov (%edx,%eax,4), %ecx
        test %ecx, %ecx
        jz 1f
        imul $0x9e3779b1, %eax, %eax
        imul $0x85ebca77, %ecx, %ecx
        xor %ecx, %eax
        or $1, %eax
        jmp 2f
1:      xor %eax, %eax
2:      pop %ecx
        pop %edx
        ret

        QEMU_COMMON
        .data
        .p2align 2
iterations:     .long 200
seed:           .long 1
port_burst:     .long 8
rtc_rate:       .long 7
bm_base:        .long 0
ticks:          .long 0
ide_done:       .long 0, 0
idt_desc:
        .word 256 * 8 - 1
        .long idt
        .bss
        .p2align 12
dma_buf:        .space 4096 * MAX_DISKS         # 4 sectors each, never across 64 KiB
versions:       .space REGION * 4 * MAX_DISKS
idt:            .space 256 * 8
prd:            .space 8 * MAX_DISKS
