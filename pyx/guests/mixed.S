# mixed: disk-io plus a running timer device and a burst of P_PORT_BURST port writes
# after every block request, so that the vCPUs, the main loop's timers and the
# AIO completions all compete for the BQL; see disk-body.inc.
        .include "common.inc"
        .include "irq.inc"
        .set MIXED, 1
        .include "disk-body.inc"
