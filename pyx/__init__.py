"""kvmscope: record lock contention inside a KVM virtual machine monitor, and analyse it.

The compiled core (``kvmscope._core``) is imported lazily by the runner, so
``kvmscope.analysis`` works wherever a trace can be copied.
"""
__version__ = "0.1.0"
