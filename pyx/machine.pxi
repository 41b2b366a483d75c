# Machine: the VM, guest RAM, the board's devices, vCPU threads, and the end-of-run statistics.


cdef bint _kick_handler_installed = False


cdef int _install_kick_handler() except -1:
    global _kick_handler_installed
    cdef sigaction_t sa
    if _kick_handler_installed:
        return 0
    memset(&sa, 0, sizeof(sa))
    sa.sa_handler = ks_kick_handler
    sigemptyset(&sa.sa_mask)
    if sigaction(SIGUSR1, &sa, NULL) != 0:
        raise_errno("sigaction(SIGUSR1)")
    _kick_handler_installed = True
    return 0


cdef class Machine:
    """A KVM virtual machine on the kvmscope board, with real vCPU threads.

    The board (``kvmscope.board``): RAM from guest-physical 0; guest code at
    ``CODE_ADDR``, the parameter block at ``PARAMS_ADDR``; a debug port, the
    exit device, a 16550-style serial port, a scratch MMIO page, the timer and
    block devices.  vCPUs start in flat 32-bit protected mode with EAX =
    vCPU index and EBX = parameter block address.

    Parameters
    ----------
    kvm : Kvm
    tracer : Tracer
    vcpus : int
    mem_size : int
        Bytes of guest RAM (at least 1 MiB, a multiple of 4 KiB).
    """
    cdef ks_machine *m
    cdef readonly Kvm kvm
    cdef readonly Tracer tracer
    cdef readonly list callsites
    cdef readonly list devices
    cdef readonly list bh_names
    cdef readonly list timer_names
    cdef ks_thread drain_thr
    cdef bint started

    def __cinit__(self, Kvm kvm, Tracer tracer, int vcpus=1, uint64_t mem_size=16 << 20,
                  irqchip="kernel", disk_path=None, int aio_threads=2):
        self.m = NULL
        self.kvm = kvm
        self.tracer = tracer
        self.callsites = list(BASE_CALLSITES)
        self.devices = []
        self.bh_names = []
        self.timer_names = []
        if irqchip not in ("kernel", "user"):
            raise ValueError(f"irqchip {irqchip!r}: use kernel or user")
        if vcpus < 1 or vcpus > KS_MAX_VCPUS or vcpus > kvm.max_vcpus:
            raise ValueError(f"vcpus={vcpus} out of range: use 1 .. {min(KS_MAX_VCPUS, kvm.max_vcpus)}")
        if mem_size < (1 << 20) or mem_size > KS_RAM_MAX or mem_size % 4096:
            raise ValueError(f"memory size {mem_size} out of range: use 1 MiB .. 3 GiB, a multiple of 4 KiB")
        self.m = <ks_machine *>calloc(1, sizeof(ks_machine))
        if self.m == NULL:
            raise MemoryError()
        m = self.m
        m.vm_fd = -1
        m.console_fds[0] = -1
        m.console_fds[1] = -1
        m.tracing = tracer.enabled
        m.irqchip_kernel = irqchip == "kernel"
        lock_init(&m.bql, 0)
        pthread_mutex_init(&m.done_mutex, NULL)
        pthread_cond_init(&m.done_cond, NULL)
        m.vm_fd = ioctl(kvm.fd, KVM_CREATE_VM, 0)
        if m.vm_fd < 0:
            raise_errno("KVM_CREATE_VM")
        if ioctl(m.vm_fd, KVM_SET_TSS_ADDR, <unsigned long>0xfffbd000) < 0:
            raise_errno("KVM_SET_TSS_ADDR")
        self._setup_memory(mem_size)
        if m.irqchip_kernel:
            if ioctl(kvm.fd, KVM_CHECK_EXTENSION, <int>KVM_CAP_IRQ_ROUTING) <= 0 or \
                    ioctl(kvm.fd, KVM_CHECK_EXTENSION, <int>KVM_CAP_IRQFD) <= 0:
                raise KvmError(f"{kvm.path}: KVM_CAP_IRQ_ROUTING or KVM_CAP_IRQFD missing "
                               "(needed for --irqchip kernel; try --irqchip user)")
            if ioctl(m.vm_fd, KVM_CREATE_IRQCHIP, 0) < 0:
                raise_errno("KVM_CREATE_IRQCHIP")
        self._setup_event_model(disk_path, aio_threads)
        self._add_region("debugport", KS_SPACE_PIO, KS_DEBUG_PORT, KS_DEBUG_PORT_SIZE, debugport__access, m, False)
        self._add_region("exitdev", KS_SPACE_PIO, KS_EXIT_PORT, KS_EXIT_PORT_SIZE, exitdev__access, m, False)
        self._add_region("serial", KS_SPACE_PIO, KS_SERIAL_PORT, KS_SERIAL_PORT_SIZE, serial__access, m, False)
        self._add_region("scratch", KS_SPACE_MMIO, KS_SCRATCH_MMIO, KS_SCRATCH_MMIO_SIZE, scratch__access, m, False)
        self._add_region("timerdev", KS_SPACE_PIO, KS_TIMERDEV_PORT, KS_TIMERDEV_PORT_SIZE, timerdev__access,
                         m.timerdev, False)
        self._add_region("blk", KS_SPACE_PIO, KS_BLK_PORT, KS_BLK_PORT_SIZE, blk__access, m.blk, False)
        if not m.irqchip_kernel:
            # EOIs of the guest become trace events; no BQL, like an in-kernel APIC
            self._add_region("lapic", KS_SPACE_MMIO, KS_LAPIC_MMIO, KS_LAPIC_MMIO_SIZE, lapic_stub__access, m, True)
        for i in range(vcpus):
            self._create_vcpu(i)
        tracer.register(&m.loop.thr, "main", "main")
        for i in range(m.aio.nworkers):
            tracer.register(&m.aio.thr[i], f"aio{i}", "aio")
            m.aio.thr[i].ring = NULL     # workers record nothing; completions are recorded by the loop
        for i in range(vcpus):
            self._add_timer(i)
        if m.irqchip_kernel:
            self._setup_irq_routes()
        self.drain_thr.tid = ks_gettid()
        tracer.register(&self.drain_thr, "drain", "drain")
        self.drain_thr.ring = NULL       # the drain itself records nothing

    cdef int _setup_memory(self, uint64_t size) except -1:
        cdef kvm_userspace_memory_region region
        cdef void *mem = mmap(NULL, size, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        if mem == MAP_FAILED:
            raise_errno(f"mmap of {size} bytes of guest RAM")
        self.m.mem = <uint8_t *>mem
        self.m.mem_size = size
        memset(&region, 0, sizeof(region))
        region.slot = 0
        region.guest_phys_addr = 0
        region.memory_size = size
        region.userspace_addr = <uint64_t>mem
        if ioctl(self.m.vm_fd, KVM_SET_USER_MEMORY_REGION, &region) < 0:
            raise_errno("KVM_SET_USER_MEMORY_REGION")
        return 0

    cdef int _setup_event_model(self, disk_path, int aio_threads) except -1:
        cdef ks_machine *m = self.m
        cdef int fd = -1
        m.loop = <ks_loop *>calloc(1, sizeof(ks_loop))
        m.aio = <ks_aio_pool *>calloc(1, sizeof(ks_aio_pool))
        m.blk = <ks_blk *>calloc(1, sizeof(ks_blk))
        m.timerdev = <ks_timerdev *>calloc(1, sizeof(ks_timerdev))
        if m.loop == NULL or m.aio == NULL or m.blk == NULL or m.timerdev == NULL:
            raise MemoryError()
        m.aio.efd = -1
        m.blk.fd = -1
        self.callsites.append("main:dispatch")
        loop_init(m.loop, m, len(self.callsites) - 1)
        aio_init(m.aio, m, aio_threads)
        self.bh_names.append("aio:complete")
        m.console_bh = bh_new(m.loop, console__flush_bh, m, 0)
        self.bh_names.append("serial:flush")
        m.blk.m = m
        m.timerdev.m = m
        if disk_path is not None:
            bpath = os.fsencode(disk_path)
            fd = open(<const char *>bpath, O_RDWR | O_CLOEXEC)
            if fd < 0:
                raise_errno(f"cannot open disk image {disk_path}")
            m.blk.fd = fd
            m.blk.size = (os.fstat(fd).st_size // KS_BLK_SECTOR_SIZE) * KS_BLK_SECTOR_SIZE
        return 0

    cdef int _add_timer(self, int vcpu) except -1:
        cdef ks_timerdev_bank *bank = &self.m.timerdev.banks[vcpu]
        bank.dev = self.m.timerdev
        bank.vcpu = vcpu
        bank.timer = timer_new(self.m.loop, timerdev__fire, bank)
        if bank.timer == NULL:
            raise KvmscopeError("main loop timer table full")
        self.timer_names.append(f"timerdev:vcpu{vcpu}")
        return 0

    cdef int _setup_irq_routes(self) except -1:
        """One MSI route per (vCPU, source) to that vCPU's local APIC, raised through an irqfd."""
        cdef ks_machine *m = self.m
        cdef int n = m.nvcpus * KS_IRQ_SOURCES, i, v, src, efd
        cdef kvm_irq_routing *routes = <kvm_irq_routing *>calloc(
            1, sizeof(kvm_irq_routing) + n * sizeof(kvm_irq_routing_entry))
        cdef kvm_irqfd irqfd
        if routes == NULL:
            raise MemoryError()
        routes.nr = n
        i = 0
        for v in range(m.nvcpus):
            for src in range(KS_IRQ_SOURCES):
                routes.entries[i].gsi = irq_gsi(v, src)
                routes.entries[i].type = KVM_IRQ_ROUTING_MSI
                routes.entries[i].u.msi.address_lo = KS_LAPIC_MMIO | (v << 12)
                routes.entries[i].u.msi.address_hi = 0
                routes.entries[i].u.msi.data = KS_VECTOR_BASE + src     # fixed delivery, edge
                i += 1
        if ioctl(m.vm_fd, KVM_SET_GSI_ROUTING, routes) < 0:
            free(routes)
            raise_errno("KVM_SET_GSI_ROUTING")
        free(routes)
        for v in range(m.nvcpus):
            for src in range(KS_IRQ_SOURCES):
                efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)
                if efd < 0:
                    raise_errno("eventfd for an irqfd")
                m.irqfds[v][src] = efd
                memset(&irqfd, 0, sizeof(irqfd))
                irqfd.fd = efd
                irqfd.gsi = irq_gsi(v, src)
                if ioctl(m.vm_fd, KVM_IRQFD, &irqfd) < 0:
                    raise_errno("KVM_IRQFD")
        return 0

    cdef int _add_region(self, str name, int space, uint64_t base, uint64_t size,
                         ks_io_fn fn, void *opaque, bint lockless) except -1:
        bus_add(self.m, self.devices, name, space, base, size, fn, opaque, lockless, len(self.callsites))
        self.callsites.append(("pio:" if space == KS_SPACE_PIO else "mmio:") + name)
        return 0

    cdef int _create_vcpu(self, int index) except -1:
        cdef ks_vcpu *v = <ks_vcpu *>calloc(1, sizeof(ks_vcpu))
        cdef kvm_mp_state mp
        cdef void *run
        if v == NULL:
            raise MemoryError()
        v.index = index
        v.fd = -1
        v.m = self.m
        self.m.vcpus[index] = v
        self.m.nvcpus = index + 1
        v.fd = ioctl(self.m.vm_fd, KVM_CREATE_VCPU, <unsigned long>index)
        if v.fd < 0:
            raise_errno(f"KVM_CREATE_VCPU {index}")
        v.run_size = self.kvm.run_size
        run = mmap(NULL, v.run_size, PROT_READ | PROT_WRITE, MAP_SHARED, v.fd, 0)
        if run == MAP_FAILED:
            raise_errno(f"mmap of vcpu{index} kvm_run")
        v.run = <kvm_run *>run
        pthread_mutex_init(&v.halt_mutex, NULL)
        pthread_cond_init(&v.halt_cond, NULL)
        self._set_cpuid(v)
        self._set_flat32(v)
        if self.m.irqchip_kernel and index > 0:
            # with the in-kernel local APIC, secondary vCPUs wait for INIT/SIPI;
            # kvmscope starts them all at the same entry point instead
            mp.mp_state = KVM_MP_STATE_RUNNABLE
            if ioctl(v.fd, KVM_SET_MP_STATE, &mp) < 0:
                raise_errno(f"KVM_SET_MP_STATE vcpu{index}")
        self.tracer.register(&v.thr, f"vcpu{index}", "vcpu")
        return 0

    cdef int _set_cpuid(self, ks_vcpu *v) except -1:
        cdef int nent = 128, i
        cdef kvm_cpuid2 *c = NULL
        while True:
            c = <kvm_cpuid2 *>calloc(1, sizeof(kvm_cpuid2) + nent * sizeof(kvm_cpuid_entry2))
            if c == NULL:
                raise MemoryError()
            c.nent = nent
            if ioctl(self.kvm.fd, KVM_GET_SUPPORTED_CPUID, c) == 0:
                break
            free(c)
            if errno != E2BIG or nent > 4096:      # ask again with more room
                raise_errno("KVM_GET_SUPPORTED_CPUID")
            nent *= 2
        for i in range(c.nent):
            if c.entries[i].function == 1:
                # initial APIC id = vCPU index
                c.entries[i].ebx = (c.entries[i].ebx & 0x00ffffff) | (<uint32_t>v.index << 24)
        if ioctl(v.fd, KVM_SET_CPUID2, c) < 0:
            free(c)
            raise_errno(f"KVM_SET_CPUID2 vcpu{v.index}")
        free(c)
        return 0

    cdef int _set_flat32(self, ks_vcpu *v) except -1:
        # Registers are set once here, before the vCPU thread starts; the
        # run loop itself never calls GET/SET_REGS.
        cdef kvm_sregs sregs
        cdef kvm_regs regs
        cdef kvm_segment seg
        if ioctl(v.fd, KVM_GET_SREGS, &sregs) < 0:
            raise_errno("KVM_GET_SREGS")
        memset(&seg, 0, sizeof(seg))
        seg.base = 0
        seg.limit = 0xffffffff
        seg.present = 1
        seg.dpl = 0
        seg.db = 1
        seg.s = 1
        seg.l = 0
        seg.g = 1
        seg.selector = 0x08
        seg.type = 11           # code: execute/read, accessed
        sregs.cs = seg
        seg.selector = 0x10
        seg.type = 3            # data: read/write, accessed
        sregs.ds = seg
        sregs.es = seg
        sregs.fs = seg
        sregs.gs = seg
        sregs.ss = seg
        sregs.cr0 |= 1          # protected mode, paging off
        if ioctl(v.fd, KVM_SET_SREGS, &sregs) < 0:
            raise_errno("KVM_SET_SREGS")
        memset(&regs, 0, sizeof(regs))
        regs.rflags = 2
        regs.rip = KS_CODE_ADDR
        regs.rsp = KS_STACK_TOP - <uint64_t>v.index * KS_STACK_PER_VCPU
        regs.rax = v.index
        regs.rbx = KS_PARAMS_ADDR
        if ioctl(v.fd, KVM_SET_REGS, &regs) < 0:
            raise_errno("KVM_SET_REGS")
        return 0

    def __dealloc__(self):
        cdef int i, j
        cdef ks_vcpu *v
        if self.m == NULL:
            return
        if self.started:
            self.stop()
            self.join()
        for i in range(self.m.nvcpus):
            v = self.m.vcpus[i]
            if v == NULL:
                continue
            if v.run != NULL:
                munmap(v.run, v.run_size)
            if v.fd >= 0:
                close(v.fd)
            free(v)
        if self.m.loop != NULL:
            loop_destroy(self.m.loop)
            free(self.m.loop)
        if self.m.aio != NULL:
            aio_destroy(self.m.aio)
            free(self.m.aio)
        if self.m.blk != NULL:
            if self.m.blk.fd >= 0:
                close(self.m.blk.fd)
            free(self.m.blk)
        free(self.m.timerdev)
        for i in range(self.m.nvcpus):
            for j in range(KS_IRQ_SOURCES):
                if self.m.irqfds[i][j] > 0:
                    close(self.m.irqfds[i][j])
        if self.m.mem != NULL:
            munmap(self.m.mem, self.m.mem_size)
        if self.m.vm_fd >= 0:
            close(self.m.vm_fd)
        free(self.m)
        self.m = NULL

    # ---- guest memory ----------------------------------------------------
    property mem_size:
        def __get__(self):
            return self.m.mem_size

    property nvcpus:
        def __get__(self):
            return self.m.nvcpus

    def write_mem(self, uint64_t addr, const uint8_t[::1] data):
        """Copy ``data`` into guest RAM at guest-physical ``addr``."""
        cdef uint64_t n = data.shape[0]
        if addr > self.m.mem_size or n > self.m.mem_size - addr:
            raise ValueError(f"guest write of {n} bytes at {addr:#x} is outside guest RAM ({self.m.mem_size:#x} bytes)")
        if n:
            memcpy(self.m.mem + addr, &data[0], n)

    def load_image(self, const uint8_t[::1] image):
        """Load a flat guest binary at ``CODE_ADDR``."""
        if image.shape[0] > KS_CODE_MAX:
            raise ValueError(f"guest image of {image.shape[0]} bytes exceeds the {KS_CODE_MAX}-byte code area")
        self.write_mem(KS_CODE_ADDR, image)

    # ---- options ---------------------------------------------------------
    def set_console_fds(self, int out_fd=-1, int log_fd=-1):
        """File descriptors that receive the guest's serial output (-1: none)."""
        self.m.console_fds[0] = out_fd
        self.m.console_fds[1] = log_fd

    def set_inject_hold(self, str callsite, double ns):
        """Busy-hold the BQL ``ns`` nanoseconds longer at ``callsite`` (experiments)."""
        if callsite not in self.callsites:
            raise ValueError(f"unknown call site {callsite!r}; known: {', '.join(self.callsites)}")
        if ns < 0:
            raise ValueError("inject-hold time must be >= 0")
        self.m.bql.inject_hold_raw[self.callsites.index(callsite)] = <int64_t>(ns * raw_per_ns())

    def set_lockless(self, str device, bint lockless=True):
        """Dispatch ``device`` without the BQL (A/B experiments)."""
        if device not in self.devices:
            raise ValueError(f"unknown device {device!r}; known: {', '.join(self.devices)}")
        self.m.regions[self.devices.index(device)].lockless = lockless

    # ---- running -----------------------------------------------------------
    def start(self):
        """Start one thread per vCPU."""
        cdef int i, rc
        cdef ks_vcpu *v
        if self.started:
            raise KvmscopeError("machine already started")
        _install_kick_handler()
        self.started = True
        loop_start(self.m.loop)
        aio_start(self.m.aio)
        self.m.running = self.m.nvcpus
        for i in range(self.m.nvcpus):
            v = self.m.vcpus[i]
            v.state = KS_VCPU_RUNNING
            rc = pthread_create(&v.pthread, NULL, vcpu__main, v)
            if rc != 0:
                self.m.running -= self.m.nvcpus - i
                for j in range(i, self.m.nvcpus):
                    self.m.vcpus[j].state = KS_VCPU_DONE
                self.stop()
                raise_errno(f"pthread_create vcpu{i}", rc)
            v.started = 1
            pthread_setname_np(v.pthread, f"vcpu{i}".encode())

    def wait(self, double timeout):
        """Wait up to ``timeout`` seconds for every vCPU to finish; True when all have.

        Returns early (False) when a thread in lossless mode waits for the drain.
        """
        cdef int64_t deadline = ks_mono_ns() + <int64_t>(timeout * 1e9)
        cdef timespec ts
        cdef int running
        ts.tv_sec = 0
        ts.tv_nsec = 1000000
        with nogil:
            while True:
                pthread_mutex_lock(&self.m.done_mutex)
                running = self.m.running
                pthread_mutex_unlock(&self.m.done_mutex)
                if running == 0 or ks_mono_ns() >= deadline:
                    break
                if ks_load_acquire_int(&ks_drain_wanted):
                    ks_store_release_int(&ks_drain_wanted, 0)
                    break
                if nanosleep(&ts, NULL) != 0:
                    break           # a signal for the main thread (Ctrl-C)
        return running == 0

    def stop(self):
        """Ask every vCPU to stop: set the stop flag and kick them out of KVM_RUN."""
        with nogil:
            machine_request_stop(self.m, NULL)

    def join(self):
        """Wait for the vCPU threads to end (after they finished or were stopped),
        then stop the main loop and the AIO workers, finishing their last requests."""
        cdef int i
        cdef ks_vcpu *v
        for i in range(self.m.nvcpus):
            v = self.m.vcpus[i]
            if v.started:
                with nogil:
                    pthread_join(v.pthread, NULL)
                v.started = 0
        if self.started:
            with nogil:
                loop_stop_join(self.m.loop)
                aio_stop_join(self.m.aio)
                # every thread is stopped: finish what the workers did last on
                # the main loop's behalf (its ring has no other writer now)
                aio_complete_all(self.m.aio, &self.m.loop.thr)
        self.started = False

    # ---- results -----------------------------------------------------------
    def console(self):
        """Bytes the guest wrote to the serial port (the first 64 KiB), including an unfinished line."""
        out = PyBytes_FromStringAndSize(<char *>self.m.console_capture, self.m.console_len)
        return out + PyBytes_FromStringAndSize(<char *>self.m.console_buf, self.m.console_buf_len)

    def flush_console(self):
        """Write out a last unfinished console line."""
        console__flush_locked(self.m)

    def stats(self):
        """Always-on counters: per vCPU exits and state; BQL acquisitions, contentions and wait."""
        cdef int i, r
        cdef ks_vcpu *v
        scale = 1.0 / raw_per_ns()
        vcpus = []
        acq = cont = 0
        wait = 0.0
        for i in range(self.m.nvcpus):
            v = self.m.vcpus[i]
            by_reason = {}
            exit_time = {}
            for r in range(KS_EXIT_REASONS):
                if v.exits_by_reason[r]:
                    name = EXIT_REASONS[r] if r < len(EXIT_REASONS) else f"reason{r}"
                    by_reason[name] = v.exits_by_reason[r]
                    exit_time[name] = {"total_ns": int(v.exit_time_raw[r] * scale),
                                       "max_ns": int(v.exit_time_max_raw[r] * scale)}
            vcpus.append({
                "vcpu": i, "tid": v.thr.tid, "exits": v.exits_total, "by_reason": by_reason,
                "exit_time": exit_time,
                "run_ns": max(0, v.last_exit_ns - v.first_entry_ns) if v.first_entry_ns else 0,
                "finished_by_guest": bool(v.finished_by_guest), "exit_status": v.exit_status,
                "message": v.errmsg.decode(errors="replace") if v.errmsg[0] else "",
            })
            acq += v.thr.lock_acquisitions
            cont += v.thr.lock_contended
            wait += v.thr.lock_wait_raw * scale
        vcpu_acq = acq
        acq += self.m.loop.thr.lock_acquisitions
        cont += self.m.loop.thr.lock_contended
        wait += self.m.loop.thr.lock_wait_raw * scale
        return {
            "vcpus": vcpus, "error": bool(self.m.error),
            "bql": {"acquisitions": acq, "contended": cont, "wait_ns": int(wait),
                    "vcpu_acquisitions": vcpu_acq,
                    "main_loop_acquisitions": self.m.loop.thr.lock_acquisitions},
            "debugport_writes": self.m.debugport_writes,
            "main_loop": {"iterations": self.m.loop.iterations,
                          "bh_runs": {self.bh_names[i]: self.m.loop.bhs[i].runs for i in range(self.m.loop.nbhs)}},
            "aio": {"submitted": self.m.aio.submitted, "completed": self.m.aio.completed},
            "blk": {"requests": self.m.blk.requests, "errors": self.m.blk.errors},
            "timer_ticks": [self.m.timerdev.banks[i].ticks for i in range(self.m.nvcpus)],
            "irqchip": "kernel" if self.m.irqchip_kernel else "user",
        }
