"""Test configuration: the `kvm` marker, detected by actually opening /dev/kvm.

KVM tests skip, with the reason, where /dev/kvm is missing or unusable.
KVMSCOPE_TEST_KVM=1 makes that a failure instead (CI on a KVM host);
KVMSCOPE_TEST_KVM=0 skips them everywhere.
"""
import os

import pytest

from kvm_env import KVM_REASON, KVM_USABLE


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
