# /dev/kvm: open it, check the API version and every capability the core relies on.

# (name, constant, what the core uses it for)
REQUIRED_CAPS = (
    ("KVM_CAP_USER_MEMORY", KVM_CAP_USER_MEMORY, "guest RAM from host memory"),
    ("KVM_CAP_SET_TSS_ADDR", KVM_CAP_SET_TSS_ADDR, "x86 TSS placement"),
    ("KVM_CAP_EXT_CPUID", KVM_CAP_EXT_CPUID, "guest CPUID"),
    ("KVM_CAP_IMMEDIATE_EXIT", KVM_CAP_IMMEDIATE_EXIT, "kicking vCPUs out of KVM_RUN"),
    ("KVM_CAP_SYNC_REGS", KVM_CAP_SYNC_REGS, "guest registers without an ioctl per exit"),
)


cdef class Kvm:
    """The KVM system file descriptor (``/dev/kvm``).

    Opening checks the API version and the capabilities in
    :data:`REQUIRED_CAPS`; any failure raises :class:`KvmError` with one line
    naming what is missing.

    Examples
    --------
    >>> kvm = Kvm("/dev/kvm")          # doctest: +SKIP
    >>> kvm.max_vcpus >= 1             # doctest: +SKIP
    True
    """
    cdef readonly int fd
    cdef readonly str path
    cdef readonly int api_version
    cdef readonly int run_size
    cdef readonly int max_vcpus
    cdef readonly int recommended_vcpus

    def __cinit__(self, path="/dev/kvm"):
        self.fd = -1
        self.path = str(path)
        cdef bytes bpath = os.fsencode(path)
        cdef const char *cpath = bpath
        cdef int fd
        with nogil:
            fd = open(cpath, O_RDWR | O_CLOEXEC)
        if fd < 0:
            raise_errno(f"cannot open {path}", 0, True)
        self.fd = fd
        self.api_version = ioctl(fd, KVM_GET_API_VERSION, 0)
        if self.api_version != KVM_API_VERSION:
            raise KvmError(f"{path}: KVM API version {self.api_version}, kvmscope needs {KVM_API_VERSION}")
        for name, cap, use in REQUIRED_CAPS:
            if ioctl(fd, KVM_CHECK_EXTENSION, <int>cap) <= 0:
                raise KvmError(f"{path}: capability {name} missing (needed for {use})")
        if not (ioctl(fd, KVM_CHECK_EXTENSION, <int>KVM_CAP_SYNC_REGS) & KVM_SYNC_X86_REGS):
            raise KvmError(f"{path}: KVM_CAP_SYNC_REGS lacks KVM_SYNC_X86_REGS")
        self.run_size = ioctl(fd, KVM_GET_VCPU_MMAP_SIZE, 0)
        if self.run_size < <int>sizeof(kvm_run):
            raise_errno(f"{path}: KVM_GET_VCPU_MMAP_SIZE")
        self.recommended_vcpus = max(1, ioctl(fd, KVM_CHECK_EXTENSION, <int>KVM_CAP_NR_VCPUS))
        self.max_vcpus = max(self.recommended_vcpus, ioctl(fd, KVM_CHECK_EXTENSION, <int>KVM_CAP_MAX_VCPUS))

    def __dealloc__(self):
        if self.fd >= 0:
            close(self.fd)

    def check_extension(self, int cap):
        """Raw ``KVM_CHECK_EXTENSION`` result for capability number ``cap``."""
        return ioctl(self.fd, KVM_CHECK_EXTENSION, cap)

    def capabilities(self):
        """Dict of the capabilities kvmscope knows, by name, with their values."""
        names = dict((n, c) for n, c, _ in REQUIRED_CAPS)
        names.update(KVM_CAP_NR_VCPUS=KVM_CAP_NR_VCPUS, KVM_CAP_MAX_VCPUS=KVM_CAP_MAX_VCPUS,
                     KVM_CAP_IRQCHIP=KVM_CAP_IRQCHIP, KVM_CAP_IRQFD=KVM_CAP_IRQFD,
                     KVM_CAP_IOEVENTFD=KVM_CAP_IOEVENTFD, KVM_CAP_PIT2=KVM_CAP_PIT2,
                     KVM_CAP_SIGNAL_MSI=KVM_CAP_SIGNAL_MSI)
        return {n: ioctl(self.fd, KVM_CHECK_EXTENSION, <int>c) for n, c in names.items()}
