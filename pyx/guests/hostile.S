# hostile: P_ITERATIONS random attacks per vCPU on every device of the board,
# from an LCG seeded with P_SEED ^ (index * 0x9e3779b9): random values and
# widths on the board's ports and random others, string I/O with huge counts,
# MMIO on the scratch page, across its ends, across page ends and across the
# end of RAM, random timer periods, and block requests with bad commands,
# counts, sectors and DMA buffers.  Block requests and bursts whose refusal
# status is defined are checked; the exit status is the number of wrong
# statuses (0: the host refused everything it should).  docs/guests.md lists
# the attacks.
#
# The guest must still finish and must only hurt itself where it means to:
# it never writes the exit device except at the end, keeps the block
# device's DMA address on a junk zone (or outside RAM) whenever a command can
# start, stays off the in-kernel local APIC and IOAPIC pages (an IPI or an
# APIC timer would not be an attack on kvmscope), and counts timer ticks
# without acknowledging them, so only its own random acknowledgements ever
# raise another tick (no interrupt storm).
        .include "common.inc"
        .include "irq.inc"

        .set PD_RNG, 8                          # per-vCPU data (stack page bottom)
        .set PD_BAD, 12
        .set PD_LEFT, 16
        .set PD_SECTORS, 20                     # image size in sectors
        .set JUNK, 0x400000                     # DMA and string-input target, shared
        .set JUNK_SIZE, 0x40000
        .set END_ZONE, 0x21000                  # valid DMA near the end of RAM stays in it
        .set NATTACKS, 10
        .set BLK_WRAP, 1 << (32 - BLK_SECTOR_SHIFT)  # sectors whose byte size is 2^32
        # command_value and atk_blk_burst compute commands as 1 + (0, 1 or 2)
        .if BLK_CMD_READ != 1 || BLK_CMD_WRITE != 2 || BLK_CMD_FLUSH != 3
        .error "hostile.S: block commands are no longer read 1, write 2, flush 3"
        .endif
        # atk_any_port only reads in the 64 ports of the timer and block devices
        .if (TIMERDEV_PORT & 0xffc0) != (BLK_PORT & 0xffc0) || ((BLK_PORT + BLK_PORT_SIZE - 1) & 0xffc0) != (BLK_PORT & 0xffc0)
        .error "hostile.S: the timer and block devices are no longer in one 64-port block"
        .endif

        GUEST_ENTRY
        PERCPU_BASE
        IDT_SETUP
        push %eax
        shl $IDT_SHIFT, %eax
        lea IDT_BASE+TIMER_VECTOR*8(%eax), %edi
        mov $isr_tick, %edx
        call idt_set_gate
        pop %eax
        mov $0x9e3779b9, %edx
        imul %edx, %eax
        xor P_SEED, %eax
        mov %eax, PD_RNG(%ebp)
        mov P_ITERATIONS, %eax
        mov %eax, PD_LEFT(%ebp)
        movl $0, PD_BAD(%ebp)
        mov $BLK_SIZE_REG, %dx
        in %dx, %eax
        mov %eax, PD_SECTORS(%ebp)
        call blk_junk_buf                       # the reset value 0 would aim DMA at our code
        sti
main:
        cmpl $0, PD_LEFT(%ebp)
        je finish
        decl PD_LEFT(%ebp)
        mov $NATTACKS, %eax
        call rand_below
        call *attacks(,%eax,4)
        jmp main
finish:
        mov PD_BAD(%ebp), %eax
        GUEST_EXIT

        .p2align 2
attacks:
        .long atk_board_out, atk_board_in, atk_any_port, atk_string_io, atk_string_io
        .long atk_scratch, atk_mmio, atk_timer, atk_blk_request, atk_blk_burst

# ---- random numbers -------------------------------------------------------
# rand: EAX = 32 bits from two LCG steps (the high halves); clobbers EDX.
rand:
        mov PD_RNG(%ebp), %eax
        imul $1664525, %eax, %eax
        add $1013904223, %eax
        mov %eax, %edx
        imul $1664525, %eax, %eax
        add $1013904223, %eax
        mov %eax, PD_RNG(%ebp)
        shr $16, %edx
        and $0xffff0000, %eax
        or %edx, %eax
        ret

# rand_below: EAX = n -> EAX uniform in [0, n) (0 for n = 0); clobbers EDX.
rand_below:
        push %ecx
        mov %eax, %ecx
        call rand
        mul %ecx
        mov %edx, %eax
        pop %ecx
        ret

# ---- access helpers: width index ECX (0, 1, 2 = 1, 2, 4 bytes) ------------
pio_out:                                        # port DX, value EAX
        cmp $1, %ecx
        jb 1f
        je 2f
        out %eax, %dx
        ret
1:      out %al, %dx
        ret
2:      out %ax, %dx
        ret

pio_in:                                         # port DX -> EAX
        cmp $1, %ecx
        jb 1f
        je 2f
        in %dx, %eax
        ret
1:      in %dx, %al
        ret
2:      in %dx, %ax
        ret

mmio_write:                                     # address EDI, value EAX
        cmp $1, %ecx
        jb 1f
        je 2f
        mov %eax, (%edi)
        ret
1:      mov %al, (%edi)
        ret
2:      mov %ax, (%edi)
        ret

mmio_read:                                      # address EDI -> EAX
        cmp $1, %ecx
        jb 1f
        je 2f
        mov (%edi), %eax
        ret
1:      mov (%edi), %al
        ret
2:      mov (%edi), %ax
        ret

# random_width: ECX = 0, 1 or 2; clobbers EAX, EDX.
random_width:
        mov $3, %eax
        call rand_below
        mov %eax, %ecx
        ret

# board_port: EAX = a port in or next to one of the board's PIO regions
# (table `ports`: first port, span); writes use the first 4 rows only.
board_port:
        call rand_below
        mov ports(,%eax,8), %edx
        mov ports+4(,%eax,8), %eax
        push %edx
        call rand_below
        pop %edx
        add %edx, %eax
        ret

        .p2align 2
ports:  .long DEBUG_PORT-1, DEBUG_PORT_SIZE+2
        .long SERIAL_PORT-1, SERIAL_PORT_SIZE+2
        .long TIMERDEV_PORT-1, TIMERDEV_PORT_SIZE+2
        .long BLK_PORT-1, BLK_PORT_SIZE+2
        .long EXIT_PORT-1, EXIT_PORT_SIZE+2     # read only

# ---- value classes --------------------------------------------------------
printable:                                      # EAX = a console byte ('\n' 1 in 16)
        mov $16, %eax
        call rand_below
        test %eax, %eax
        jnz 1f
        mov $10, %eax
        ret
1:      mov $95, %eax
        call rand_below
        add $32, %eax
        ret

period_value:                                   # EAX = a timer period in us
        mov $6, %eax
        call rand_below
        mov period_classes(,%eax,4), %eax
        cmp $0xfffffffe, %eax
        jne 1f
        call rand
        ret
1:      cmp $0xfffffffd, %eax
        jne 2f
        mov $1000, %eax
        call rand_below
        inc %eax
2:      ret
        .p2align 2
period_classes:
        .long 0, 1, 200, 0xffffffff, 0xfffffffe, 0xfffffffd   # stop, tiny, 5 kHz, huge, any, 1..1000

# buf_value: ECX = sector count -> EAX = a DMA address that is either in the
# junk zone, in the last END_ZONE bytes of RAM, or not entirely inside RAM.
buf_value:
        push %ecx
        mov $7, %eax
        call rand_below
        jmp *buf_classes(,%eax,4)
        .p2align 2
buf_classes:
        .long 10f, 11f, 12f, 13f, 14f, 15f, 16f
10:     mov $0x1000, %eax                       # junk zone
        call rand_below
        add $JUNK, %eax
        jmp 19f
11:     mov $END_ZONE, %eax                     # near the end of RAM
        call rand_below
        neg %eax
        add P_MEM_SIZE, %eax
        jmp 19f
12:     mov (%esp), %eax                        # ends exactly at the end of RAM
        shl $BLK_SECTOR_SHIFT, %eax
        neg %eax
        add P_MEM_SIZE, %eax
        jmp 19f
13:     mov (%esp), %eax                        # one byte over the end of RAM
        shl $BLK_SECTOR_SHIFT, %eax
        neg %eax
        add P_MEM_SIZE, %eax
        inc %eax
        jmp 19f
14:     mov $0x10000, %eax                      # at or past the end of RAM
        call rand_below
        add P_MEM_SIZE, %eax
        jmp 19f
15:     mov $0x20000, %eax                      # wrapping 2^32
        call rand_below
        not %eax
        jmp 19f
16:     call rand                               # anything outside RAM, else junk
        cmp P_MEM_SIZE, %eax
        jae 19f
        and $0xfff, %eax
        add $JUNK, %eax
19:     pop %ecx
        # a valid count with an address that would land in RAM below the
        # end zone and outside the junk zone is moved into the junk zone
        cmp P_MEM_SIZE, %eax
        jae 21f
        mov P_MEM_SIZE, %edx
        sub $END_ZONE, %edx
        cmp %edx, %eax
        jae 21f
        cmp $JUNK, %eax
        jb 20f
        cmp $JUNK+0x1000, %eax
        jb 21f
20:     and $0xfff, %eax
        add $JUNK, %eax
21:     ret

sector_value:                                   # EAX = a sector number
        mov $6, %eax
        call rand_below
        jmp *sector_classes(,%eax,4)
        .p2align 2
sector_classes:
        .long 10f, 11f, 12f, 13f, 14f, 15f
10:     mov PD_SECTORS(%ebp), %eax              # inside the image
        jmp rand_below
11:     mov $4, %eax                            # at the end of the image
        call rand_below
        neg %eax
        add PD_SECTORS(%ebp), %eax
        ret
12:     mov $4, %eax                            # wrapping 2^32
        call rand_below
        not %eax
        ret
13:     mov $4, %eax                            # sector * 512 wraps 2^32 in 32 bits
        call rand_below
        add $BLK_WRAP, %eax
        ret
14:     jmp rand
15:     xor %eax, %eax
        ret

count_value:                                    # EAX = a sector count
        mov $7, %eax
        call rand_below
        jmp *count_classes(,%eax,4)
        .p2align 2
count_classes:
        .long 10f, 10f, 11f, 12f, 13f, 14f, 15f
10:     mov $4, %eax                            # 1..4
        call rand_below
        inc %eax
        ret
11:     mov $BLK_MAX_SECTORS, %eax              # 1..256
        call rand_below
        inc %eax
        ret
12:     xor %eax, %eax
        ret
13:     mov $BLK_MAX_SECTORS+1, %eax
        ret
14:     mov $BLK_WRAP, %eax                     # count * 512 = 2^32
        ret
15:     jmp rand

command_value:                                  # EAX = a block command
        mov $8, %eax
        call rand_below
        cmp $6, %eax
        jb 1f
        je rand                                 # anything
        xor %eax, %eax                          # 0
        ret
1:      shr $1, %eax                            # 0..5 -> 0, 0, 1, 1, 2, 2
        inc %eax                                # read, read, write, write, flush, flush
        cmp $BLK_CMD_FLUSH, %eax
        jne 2f
        mov $4, %eax                            # one in four flushes is command 4
        call rand_below
        cmp $3, %eax
        jb 3f
        mov $BLK_CMD_FLUSH+1, %eax
        ret
3:      mov $BLK_CMD_FLUSH, %eax
2:      ret

# ---- PIO -------------------------------------------------------------------
atk_board_out:                                  # a random write to a board port
        mov $4, %eax
        call board_port
        mov %eax, %ebx
        call random_width
        call rand
        cmp $BLK_BUF_REG, %ebx
        jne 1f
        push %ecx
        mov $BLK_MAX_SECTORS, %ecx
        call buf_value                          # DMA addresses stay safe, 32-bit writes
        pop %ecx
        mov $2, %ecx
1:      cmp $SERIAL_THR_REG, %ebx
        jne 2f
        call printable
2:      cmp $TIMERDEV_PERIOD_REG, %ebx
        jne 3f
        call period_value
3:      mov %ebx, %edx
        jmp pio_out

atk_board_in:                                   # a random read of a board port
        mov $5, %eax
        call board_port
        mov %eax, %ebx
        call random_width
        mov %ebx, %edx
        jmp pio_in

atk_any_port:                                   # any port; reads only near the board's
        call rand
        movzwl %ax, %ebx
        call random_width
        mov %ebx, %eax
        and $0xfff0, %eax                       # the 16-port blocks of the serial port
        cmp $SERIAL_PORT & 0xfff0, %eax
        je 1f
        cmp $EXIT_PORT & 0xfff0, %eax           # and the exit device,
        je 1f
        mov %ebx, %eax
        and $0xffc0, %eax                       # the 64 of the timer and block devices
        cmp $TIMERDEV_PORT & 0xffc0, %eax
        je 1f
        call rand
        test $1, %eax
        jz 1f
        mov %ebx, %edx
        jmp pio_out
1:      mov %ebx, %edx
        jmp pio_in

# String I/O: rep ins/outs of 1, 2 or 4 bytes (inputs up to 16 KiB), upwards or
# downwards, on a board port or any port; some buffers cross the end of RAM.
atk_string_io:
        call random_width
        mov %ecx, %ebx                          # bl = width index
        mov $4, %eax
        call rand_below
        test %eax, %eax
        jnz 1f
        call rand                               # any port
        movzwl %ax, %eax
        jmp 2f
1:      mov $5, %eax
        call board_port
2:      mov %eax, %edx
        call rand
        and $1, %eax
        mov %al, %bh                            # bh = 1: in, 0: out
        test %bh, %bh
        jnz 3f
        cmp $EXIT_STATUS_REG, %edx
        jne 3f
        mov $DEBUG_PORT, %edx                   # the exit device ends the run: not here
3:      push %edx
        mov $5, %eax                            # element count
        call rand_below
        test %bh, %bh                           # KVM exits once per output element,
        jnz 4f                                  # so outputs stay short (< 256)
        cmp $2, %eax
        jb 4f
        cmp $4, %eax
        je 4f
        mov $1, %eax
4:      jmp *count_sizes(,%eax,4)
        .p2align 2
count_sizes:
        .long 10f, 11f, 12f, 12f, 13f
10:     mov $16, %eax
        call rand_below
        inc %eax
        jmp 14f
11:     mov $256, %eax
        call rand_below
        inc %eax
        jmp 14f
12:     mov $0x4000, %eax                       # up to 16 KiB: KVM moves a page per exit,
                                                # its emulator ~1 us per element
        mov %bl, %cl
        shr %cl, %eax
        call rand_below
        inc %eax
        jmp 14f
13:     mov $64, %eax                           # across the end of RAM
        call rand_below
        inc %eax
        mov %eax, %ecx
        mov %eax, %esi
        shr $1, %esi
        neg %esi
        add P_MEM_SIZE, %esi
        mov %esi, %edi
        jmp 18f
14:     mov %eax, %ecx
        mov $0x1000, %eax
        call rand_below
        lea JUNK(%eax), %esi
        mov %esi, %edi
        call rand
        test $3, %eax                           # one in four runs downwards
        jnz 18f
        push %ecx
        mov $JUNK+JUNK_SIZE-4, %esi
        mov $0x1000, %eax
        call rand_below
        sub %eax, %esi
        mov %esi, %edi
        pop %ecx
        std
18:     pop %edx
        test %bh, %bh
        jnz 19f
        mov %edx, %eax                          # output to the console: its text
        and $0x10000-SERIAL_PORT_SIZE, %eax
        cmp $SERIAL_PORT, %eax
        jne 19f
        mov $text, %esi
        and $63, %ecx
        inc %ecx
        cld
19:     movzbl %bl, %eax
        movzbl %bh, %ebx
        lea (%ebx,%ebx,2), %ebx
        add %ebx, %eax
        push %edx
        call *string_ops(,%eax,4)
        cld
        pop %edx
        and $0x10000-BLK_PORT_SIZE, %edx
        cmp $BLK_PORT, %edx
        jne 20f
        call blk_junk_buf                       # an output burst may have set the address
20:     ret
        .p2align 2
string_ops:
        .long 30f, 31f, 32f, 33f, 34f, 35f
30:     rep outsb
        ret
31:     rep outsw
        ret
32:     rep outsl
        ret
33:     rep insb
        ret
34:     rep insw
        ret
35:     rep insl
        ret

# ---- MMIO ------------------------------------------------------------------
# The scratch page and the 4 bytes on each side of it, any width; some
# accesses are 8-byte cmpxchg8b (the only 8-byte access of 32-bit code), some
# rep stosb of up to 16 bytes.
atk_scratch:
        mov $SCRATCH_MMIO_SIZE+8, %eax
        call rand_below
        lea SCRATCH_MMIO-4(%eax), %edi
        call rand
        test $1, %eax                           # half of them at an end of the page
        jz 1f
        mov $8, %eax
        call rand_below
        lea SCRATCH_MMIO-4(%eax), %edi
        call rand
        test $1, %eax
        jz 1f
        add $SCRATCH_MMIO_SIZE, %edi
1:
        call random_width
        mov $8, %eax
        call rand_below
        cmp $3, %eax
        jb 11f
        je 3f
        cmp $4, %eax
        je 2f
        call rand
        jmp mmio_write
11:     jmp mmio_read
3:      mov $16, %eax
        call rand_below
        inc %eax
        mov %eax, %ecx
        call rand
        rep stosb
        ret
2:      push %ebx
        call rand
        mov %eax, %ebx
        mov %edx, %ecx
        cmpxchg8b (%edi)
        pop %ebx
        ret

# Unassigned MMIO: anywhere from 3 GiB up to the IOAPIC page, across page
# ends, and across the end of RAM.
atk_mmio:
        call random_width
        mov $3, %eax
        call rand_below
        test %eax, %eax
        jnz 1f
        mov $IOAPIC_MMIO-RAM_MAX-4, %eax
        call rand_below
        lea RAM_MAX(%eax), %edi
        jmp 3f
1:      cmp $1, %eax
        jne 2f
        mov $4, %eax                            # the last bytes of RAM and what follows
        call rand_below
        neg %eax
        add P_MEM_SIZE, %eax
        mov %eax, %edi
        mov $2, %ecx
        jmp 3f
2:      mov $(IOAPIC_MMIO-RAM_MAX)/0x1000-2, %eax  # across a page end
        call rand_below
        shl $12, %eax
        lea RAM_MAX+0x1000(%eax), %edi
        mov $3, %eax
        call rand_below
        inc %eax
        sub %eax, %edi
3:      call rand
        test $1, %eax
        jz mmio_read
        call rand
        jmp mmio_write

# ---- timer device -----------------------------------------------------------
atk_timer:
        mov $4, %eax
        call rand_below
        cmp $1, %eax
        jb 1f
        je 2f
        mov $TIMERDEV_PERIOD_REG, %ebx
        cmp $2, %eax
        je 3f
        add $TIMERDEV_REG_ACK-TIMERDEV_REG_PERIOD, %ebx
3:      call random_width
        mov %ebx, %edx
        jmp pio_in
1:      call period_value
        mov $TIMERDEV_PERIOD_REG, %dx
        out %eax, %dx
        ret
2:      mov $TIMERDEV_ACK_REG, %dx              # acknowledge: at most one more tick
        out %eax, %dx
        ret

# ---- block device -------------------------------------------------------------
blk_junk_buf:                                   # point the DMA address at the junk zone
        mov $JUNK, %eax
        mov $BLK_BUF_REG, %dx
        out %eax, %dx
        ret

# blk_wait: EAX = the status once no request is in flight.
blk_wait:
1:      cli
        mov $BLK_STATUS_REG, %dx
        in %dx, %eax
        cmp $BLK_STATUS_BUSY, %eax
        jne 2f
        sti                                     # sti;hlt: the completion cannot slip in between
        hlt
        jmp 1b
2:      sti
        ret

# expected: the status for command EBX, sector ESI, count ECX, buffer EDI, in
# the order the device checks them (docs/guests.md).
expected:
        mov $BLK_STATUS_BAD_COMMAND, %eax
        test %ebx, %ebx
        jz 1f
        cmp $BLK_CMD_FLUSH, %ebx
        ja 1f
        mov $BLK_STATUS_OK, %eax
        je 1f                                   # flush: nothing else is looked at
        mov $BLK_STATUS_BAD_COUNT, %eax
        test %ecx, %ecx
        jz 1f
        cmp $BLK_MAX_SECTORS, %ecx
        ja 1f
        mov $BLK_STATUS_BAD_RANGE, %eax
        mov %esi, %edx
        add %ecx, %edx
        jc 1f
        cmp PD_SECTORS(%ebp), %edx
        ja 1f
        mov $BLK_STATUS_BAD_DMA, %eax
        mov %ecx, %edx
        shl $BLK_SECTOR_SHIFT, %edx
        add %edi, %edx
        jc 1f
        cmp P_MEM_SIZE, %edx
        ja 1f
        xor %eax, %eax
1:      ret

# One request from the value classes, its status checked.
atk_blk_request:
        call blk_wait
        call command_value
        mov %eax, %ebx
        call sector_value
        mov %eax, %esi
        call count_value
        mov %eax, %ecx
        call buf_value
        mov %eax, %edi
        mov %esi, %eax
        mov $BLK_SECTOR_REG, %dx
        out %eax, %dx
        mov %ecx, %eax
        mov $BLK_COUNT_REG, %dx
        out %eax, %dx
        mov %edi, %eax
        mov $BLK_BUF_REG, %dx
        out %eax, %dx
        mov %ebx, %eax
        mov $BLK_CMD_REG, %dx
        out %eax, %dx
        call expected
        push %eax
        call blk_wait
        pop %edx
        cmp %edx, %eax
        je 1f
        incl PD_BAD(%ebp)
1:      ret

# A valid request, then a burst of up to 64 more commands on the command
# register with one string output while it is in flight: each is refused as
# busy (the status stays 1) or, once the first completed, starts the same
# valid request again; the status right after is 0 or 1, and 0 at the end.
atk_blk_burst:
        cmpl $16, PD_SECTORS(%ebp)
        jb 9f
        call blk_wait
        mov PD_SECTORS(%ebp), %eax
        sub $8, %eax
        call rand_below
        mov $BLK_SECTOR_REG, %dx
        out %eax, %dx
        mov $8, %eax
        call rand_below
        inc %eax
        mov $BLK_COUNT_REG, %dx
        out %eax, %dx
        call blk_junk_buf
        call rand
        and $1, %eax
        inc %eax                                # read or write
        mov %eax, %ebx
        mov $BLK_CMD_REG, %dx
        out %eax, %dx
        mov $64, %eax
        call rand_below
        inc %eax
        mov %eax, %ecx
        mov $BLK_CMD_REG, %dx
        cmp $BLK_CMD_READ, %ebx
        jne 1f
        mov $read_cmds, %esi
        rep outsb
        jmp 2f
1:      dec %ecx
        shr $2, %ecx
        inc %ecx
        mov $write_cmds, %esi
        rep outsl
2:      mov $BLK_STATUS_REG, %dx
        in %dx, %eax
        cmp $BLK_STATUS_BUSY, %eax
        jbe 3f
        incl PD_BAD(%ebp)
3:      call blk_wait
        test %eax, %eax
        jz 9f
        incl PD_BAD(%ebp)
9:      ret

# Timer ticks are counted and never acknowledged here.
isr_tick:
        push %eax
        mov %esp, %eax
        and $-STACK_PER_VCPU, %eax
        incl PD_TICKS(%eax)
        movl $0, LAPIC_EOI_REG
        pop %eax
        IRQ_RETURN

        IRQ_CODE
        GUEST_GDT

text:
        .rept 4
        .ascii "kvmscope hostile guest: the quick brown fox jumps over the lazy dog\n"
        .endr
        .p2align 2
read_cmds:
        .fill 4096, 1, BLK_CMD_READ
write_cmds:
        .fill 1024, 4, BLK_CMD_WRITE
