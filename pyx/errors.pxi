# errno -> Python exceptions, in one place.

# The core raises the pure-Python base itself (kvmscope.errors), so that the command
# line and the analysis catch one class whether or not the core is built.
from kvmscope.errors import KvmscopeError


class KvmError(KvmscopeError):
    """A KVM ioctl or set-up step failed; ``errno`` holds the system error (0 if none)."""

    def __init__(self, what, int err=0, hint=None):
        self.errno = err
        msg = f"{what}: {os.strerror(err)}" if err else str(what)
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)


cdef dict _ERRNO_HINTS = {
    ENOENT: "is the kvm module loaded? check that the device node exists",
    EACCES: "no permission: add the user to the 'kvm' group or run as root",
    EPERM: "no permission: add the user to the 'kvm' group or run as root",
}


cdef int raise_errno(what, int err=0, bint hint=False) except -1:
    """Raise KvmError for the errno of the failed call (or ``err``)."""
    if err == 0:
        err = errno
    raise KvmError(what, err, _ERRNO_HINTS.get(err) if hint else None)
