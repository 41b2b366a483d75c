"""Test configuration: the `kvm` marker, detected by actually opening /dev/kvm,
and the `qemu` marker, detected by running qemu-system-x86_64.

KVM tests skip, with the reason, where /dev/kvm is missing or unusable.
KVMSCOPE_TEST_KVM=1 makes that a failure instead (CI on a KVM host);
KVMSCOPE_TEST_KVM=0 skips them everywhere.  QEMU tests likewise skip where
QEMU cannot boot a traced guest here (KVMSCOPE_TEST_QEMU=1: a failure, =0:
skipped everywhere); the probe runs only when a QEMU test was collected.
"""
import os

import pytest

from kvm_env import KVM_REASON, KVM_USABLE


def pytest_configure(config):
    config.addinivalue_line("markers", "kvm: needs a usable /dev/kvm")
    config.addinivalue_line("markers", "qemu: runs qemu-system-x86_64 with KVM")


def _qemu_usable():
    """(usable, reason) for the QEMU tests: qemu-system-x86_64 boots a
    traced guest for QEMU on KVM and writes its mutex events."""
    forced = os.environ.get("KVMSCOPE_TEST_QEMU")
    if forced == "0":
        return False, "QEMU tests disabled by KVMSCOPE_TEST_QEMU=0"
    from kvmscope import qemu_run
    ok, why = qemu_run.probe()
    return ok, ("" if ok else why)


def _skip_qemu(items):
    tests = [item for item in items if item.get_closest_marker("qemu")]
    if not tests:
        return
    usable, reason = _qemu_usable()
    if usable:
        return
    if os.environ.get("KVMSCOPE_TEST_QEMU") == "1":
        raise pytest.UsageError(f"KVMSCOPE_TEST_QEMU=1 but {reason}")
    skip = pytest.mark.skip(reason=reason)
    for item in tests:
        item.add_marker(skip)


def pytest_report_header(config):
    return f"kvm: {'usable' if KVM_USABLE else 'skipped: ' + KVM_REASON}"


def pytest_collection_modifyitems(config, items):
    _skip_qemu(items)
    if KVM_USABLE:
        return
    if os.environ.get("KVMSCOPE_TEST_KVM") == "1":
        raise pytest.UsageError(f"KVMSCOPE_TEST_KVM=1 but {KVM_REASON}")
    skip = pytest.mark.skip(reason=KVM_REASON)
    for item in items:
        if "kvm" in item.keywords:
            item.add_marker(skip)
