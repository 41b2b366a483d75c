"""Whether the KVM tests can run here, detected by actually opening /dev/kvm
(shared by conftest.py and tests that decide per example)."""
import os

def _probe_kvm():
    """(usable, reason) for the KVM tests."""
    forced = os.environ.get("KVMSCOPE_TEST_KVM")
    if forced == "0":
        return False, "KVM tests disabled by KVMSCOPE_TEST_KVM=0"
    path = os.environ.get("KVMSCOPE_KVM_DEVICE", "/dev/kvm")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return False, f"{path} cannot be opened ({e.strerror}): no usable KVM on this machine"
    os.close(fd)
    try:
        from kvmscope import _core
        _core.Kvm(path)
    except ImportError as e:
        return False, f"the compiled core kvmscope._core is not importable: {e}"
    except Exception as e:          # a missing capability, an old API
        return False, f"KVM at {path} is unusable for kvmscope: {e}"
    return True, ""


KVM_USABLE, KVM_REASON = _probe_kvm()
