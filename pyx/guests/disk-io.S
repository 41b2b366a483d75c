# disk-io: random reads and writes over a disk image through the block device
# (DMA via the AIO pool, completion interrupts); see disk-body.inc.
        .include "common.inc"
        .include "irq.inc"
        .set MIXED, 0
        .include "disk-body.inc"
