"""Test configuration: the `kvm` marker, detected by actually opening /dev/kvm.

KVM tests skip, with the reason, where /dev/kvm is missing or unusable.
KVMSCOPE_TEST_KVM=1 makes that a failure instead (CI on a KVM host);
KVMSCOPE_TEST_KVM=0 skips them everywhere.
"""
import os

import pytest


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


def pytest_configure(config):
    config.addinivalue_line("markers", "kvm: needs a usable /dev/kvm")


def pytest_report_header(config):
    return f"kvm: {'usable' if KVM_USABLE else 'skipped: ' + KVM_REASON}"


def pytest_collection_modifyitems(config, items):
    if KVM_USABLE:
        return
    if os.environ.get("KVMSCOPE_TEST_KVM") == "1":
        raise pytest.UsageError(f"KVMSCOPE_TEST_KVM=1 but {KVM_REASON}")
    skip = pytest.mark.skip(reason=KVM_REASON)
    for item in items:
        if "kvm" in item.keywords:
            item.add_marker(skip)
