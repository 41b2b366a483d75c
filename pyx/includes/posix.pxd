# C declarations from POSIX headers the core uses: pthreads, signals, eventfd, poll, mmap, ioctl.
from libc.stdint cimport uint64_t
from posix.types cimport pid_t

cdef extern from "<time.h>" nogil:
    struct timespec:
        long tv_sec
        long tv_nsec
    int nanosleep(const timespec *req, timespec *rem)
    int clock_gettime(int clk, timespec *ts)
    enum:
        CLOCK_MONOTONIC

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    ctypedef struct pthread_attr_t:
        pass
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_mutexattr_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    ctypedef struct pthread_condattr_t:
        pass
    int pthread_create(pthread_t *thread, const pthread_attr_t *attr,
                       void *(*start)(void *) noexcept nogil, void *arg)
    int pthread_join(pthread_t thread, void **retval)
    int pthread_kill(pthread_t thread, int sig)
    pthread_t pthread_self()
    int pthread_equal(pthread_t a, pthread_t b)
    int pthread_setname_np(pthread_t thread, const char *name)
    int pthread_mutex_init(pthread_mutex_t *m, const pthread_mutexattr_t *attr)
    int pthread_mutex_destroy(pthread_mutex_t *m)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_trylock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)
    int pthread_cond_init(pthread_cond_t *c, const pthread_condattr_t *attr)
    int pthread_cond_destroy(pthread_cond_t *c)
    int pthread_cond_wait(pthread_cond_t *c, pthread_mutex_t *m)
    int pthread_cond_timedwait(pthread_cond_t *c, pthread_mutex_t *m, const timespec *abstime)
    int pthread_cond_signal(pthread_cond_t *c)
    int pthread_cond_broadcast(pthread_cond_t *c)

cdef extern from "<signal.h>" nogil:
    ctypedef struct sigset_t:
        pass
    ctypedef void (*sighandler_t)(int) noexcept nogil
    struct sigaction_t "sigaction":
        sighandler_t sa_handler
        sigset_t sa_mask
        int sa_flags
    int sigaction(int sig, const sigaction_t *act, sigaction_t *old)
    int sigemptyset(sigset_t *s)
    int sigfillset(sigset_t *s)
    int sigaddset(sigset_t *s, int sig)
    int sigdelset(sigset_t *s, int sig)
    int pthread_sigmask(int how, const sigset_t *s, sigset_t *old)
    enum:
        SIG_BLOCK
        SIG_UNBLOCK
        SIG_SETMASK
        SIGUSR1
        SIGUSR2
        SIGSEGV
        SIGBUS
        SIGFPE
        SIGILL
        SIGABRT

cdef extern from "<sys/eventfd.h>" nogil:
    int eventfd(unsigned int initval, int flags)
    enum:
        EFD_CLOEXEC
        EFD_NONBLOCK

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    ctypedef unsigned long nfds_t
    int poll(pollfd *fds, nfds_t nfds, int timeout)
    int ppoll(pollfd *fds, nfds_t nfds, const timespec *tmo, const sigset_t *sigmask)
    enum:
        POLLIN
        POLLOUT
        POLLERR
        POLLHUP
        POLLNVAL

cdef extern from "<sys/mman.h>" nogil:
    void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset)
    int munmap(void *addr, size_t length)
    int madvise(void *addr, size_t length, int advice)
    void *MAP_FAILED
    enum:
        PROT_READ
        PROT_WRITE
        MAP_SHARED
        MAP_PRIVATE
        MAP_ANONYMOUS
        MAP_NORESERVE
        MADV_MERGEABLE

cdef extern from "<sys/ioctl.h>" nogil:
    int ioctl(int fd, unsigned long request, ...)

cdef extern from "<fcntl.h>" nogil:
    int open(const char *path, int flags, ...)
    enum:
        O_RDWR
        O_RDONLY
        O_WRONLY
        O_CREAT
        O_CLOEXEC
        O_TRUNC

cdef extern from "<unistd.h>" nogil:
    int close(int fd)
    ssize_t read(int fd, void *buf, size_t n)
    ssize_t write(int fd, const void *buf, size_t n)
    ssize_t pread(int fd, void *buf, size_t n, long off)
    ssize_t pwrite(int fd, const void *buf, size_t n, long off)
    int fsync(int fd)
    int fdatasync(int fd)
    int ftruncate(int fd, long length)
    int usleep(unsigned int usec)

cdef extern from "<errno.h>" nogil:
    int errno
    enum:
        EINTR
        EAGAIN
        ENOENT
        EACCES
        EPERM
        EIO
        ENOMEM
        E2BIG

cdef extern from "<string.h>" nogil:
    char *strerror(int errnum)
