# What the kernel accounted to each thread of a run: CPU time, time spent
# runnable but waiting for a CPU (the scheduler's run queue), how many times
# it was given a CPU, voluntary and involuntary context switches.  Each
# thread samples itself when it starts its work and when it ends (two reads
# of /proc/thread-self/schedstat and two getrusage calls per thread, none
# per exit); the tracer reports the differences for every registered thread.

#: The fields of a thread's accounting, in the order of ks_cpustat.v.
CPU_FIELDS = ("cpu_ns", "runq_ns", "slices", "voluntary", "involuntary")

cdef extern from "<sys/time.h>" nogil:
    struct timeval:
        long tv_sec
        long tv_usec

cdef extern from "<sys/resource.h>" nogil:
    struct rusage:
        timeval ru_utime
        timeval ru_stime
        long ru_nvcsw
        long ru_nivcsw
    int getrusage(int who, rusage *usage)
    enum:
        RUSAGE_THREAD

cdef extern from "<stdlib.h>" nogil:
    long long strtoll(const char *s, char **end, int base)


cdef void cpustat__sample(int64_t out[KS_CPU_FIELDS]) noexcept nogil:
    """The calling thread's totals so far, in the order of CPU_FIELDS (-1
    where unknown)."""
    cdef char buf[128]
    cdef char *p
    cdef char *end
    cdef ssize_t n
    cdef int fd, i
    cdef long long v
    cdef rusage ru
    for i in range(KS_CPU_FIELDS):
        out[i] = -1
    fd = open(b"/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC)
    if fd >= 0:
        n = read(fd, buf, sizeof(buf) - 1)
        close(fd)
        if n > 0:
            buf[n] = 0
            p = buf
            # three numbers: on-CPU ns, run-queue ns, timeslices
            for i in range(3):
                v = strtoll(p, &end, 10)
                if end == p:
                    break
                out[i] = v
                p = end
    if getrusage(RUSAGE_THREAD, &ru) == 0:
        out[3] = ru.ru_nvcsw
        out[4] = ru.ru_nivcsw
        if out[0] < 0:
            out[0] = (<int64_t>ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000 + \
                (<int64_t>ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000


cdef void cpustat__begin(ks_thread *t) noexcept nogil:
    """The calling thread (*t*) starts its work."""
    cpustat__sample(t.cpu.v)
    t.cpu.state = 1


cdef void cpustat__end(ks_thread *t) noexcept nogil:
    """The calling thread (*t*) ends its work: keep what it used since
    :func:`cpustat__begin`."""
    cdef int64_t now[KS_CPU_FIELDS]
    cdef int i
    if t.cpu.state != 1:
        return
    cpustat__sample(now)
    for i in range(KS_CPU_FIELDS):
        t.cpu.v[i] = now[i] - t.cpu.v[i] if t.cpu.v[i] >= 0 and now[i] >= t.cpu.v[i] else -1
    t.cpu.state = 2
