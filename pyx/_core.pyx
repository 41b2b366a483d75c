# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled core of kvmscope: KVM wrappers, vCPU threads, the instrumented global lock, devices and the tracer."""
from libc.stdint cimport uint8_t, uint16_t, int16_t, uint32_t, int32_t, uint64_t, int64_t, INT64_MIN, INT64_MAX
from libc.stdlib cimport calloc, free
from libc.string cimport memset, memcpy, strlen
from libc.stdio cimport snprintf
from cpython.bytes cimport PyBytes_FromStringAndSize
from includes.posix cimport *
from includes.kvm cimport *
from includes.rt cimport *
from includes.records cimport *
from core_types cimport *

import io
import os
import numpy as np

from kvmscope.traceformat import EXIT_REASONS

include "errors.pxi"    # errno -> Python exceptions, in one place
include "board.pxi"     # the board's constants, generated from board.py by setup.py
include "clock.pxi"     # run clock: TSC calibration against CLOCK_MONOTONIC
include "threadcpu.pxi"  # per thread: CPU time, run-queue wait, context switches (kernel accounting)
include "tracer.pxi"    # per-thread trace rings and their drain
include "lock.pxi"      # instrumented mutex (the BQL)
include "loop.pxi"      # main loop: fd handlers, timers, bottom halves
include "aio.pxi"       # AIO worker pool
include "irq.pxi"       # interrupt delivery: in-kernel irqchip or userspace
include "kvm.pxi"       # /dev/kvm: API version and capability checks
include "bus.pxi"       # the bus: region table, registration, lookup
include "stop.pxi"      # stopping a run: the stop flag and the vCPU kicks
include "dev_debugport.pxi"  # device models, one part each
include "dev_exit.pxi"
include "dev_serial.pxi"
include "dev_scratch.pxi"
include "dev_timer.pxi"
include "dev_blk.pxi"
include "vcpu.pxi"      # vCPU threads looping on KVM_RUN without the GIL
include "machine.pxi"   # Machine: VM, memory, vCPUs, start/stop, statistics
include "schedule.pxi"  # schedules replayed on real threads through the BQL, without KVM
include "model_run.pxi"  # the re-execution model's schedules on real threads, loop, timers and AIO, without KVM
include "hostcal.pxi"    # host calibration: the sleeping hand-off latency of the BQL's kind of mutex
include "selftest.pxi"  # self-tests and micro-benchmarks (test suite and bench/ only)
