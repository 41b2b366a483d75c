"""What defines a recording (``RunConfig``) and the checks that refuse a bad one before anything starts."""
import dataclasses

from . import guests


@dataclasses.dataclass
class RunConfig:
    """Everything that defines a recording; stored in the trace's meta.json."""

    guest: str = "pio-storm"
    vcpus: int = 1
    iterations: int = None
    seed: int = 1
    memory: int = 16 << 20
    duration: float = None
    output: str = None              # trace directory; None with trace=False
    trace: bool = True
    lossless: bool = False
    ring_records: int = 1 << 16
    clock: str = "auto"
    kvm_device: str = "/dev/kvm"
    console: bool = True            # echo the guest console to stdout
    inject_hold: dict = dataclasses.field(default_factory=dict)   # callsite -> ns
    lockless: tuple = ()
    irqchip: str = "kernel"         # or "user": KVM_INTERRUPT from userspace
    aio_threads: int = 2
    disk: str = None                # disk image; None: a temporary one
    disk_size: int = 1 << 20        # bytes, when the image is created
    timer_period_us: int = None     # timer guests (default per guest)
    port_burst: int = 8             # mixed: port writes per block request
    compression: str = None         # Arrow IPC buffer compression: None, "lz4" or "zstd"

    def validate(self):
        g = guests.get(self.guest)
        if self.iterations is None:
            self.iterations = g.default_iterations
        if not 0 <= self.iterations < 2 ** 32:
            raise ValueError(f"--iterations {self.iterations} out of range: use 0 .. {2 ** 32 - 1}")
        if self.vcpus < 1:
            raise ValueError(f"--vcpus {self.vcpus}: need at least 1")
        if self.duration is not None and self.duration <= 0:
            raise ValueError(f"--duration {self.duration}: must be > 0 seconds")
        if self.memory < g.min_memory:
            raise ValueError(f"--memory {self.memory >> 20}M is too small for {g.name}: "
                             f"it needs at least {g.min_memory >> 20}M")
        if self.trace and not self.output:
            raise ValueError("no trace directory given: use -o DIR, or --no-trace")
        if self.irqchip not in ("kernel", "user"):
            raise ValueError(f"--irqchip {self.irqchip}: use kernel or user")
        if self.timer_period_us is None:
            self.timer_period_us = 2000 if self.guest == "mixed" else 1000
        if not 50 <= self.timer_period_us < 2 ** 32:
            raise ValueError(f"--timer-period-us {self.timer_period_us}: use at least 50")
        if self.compression not in (None, "lz4", "zstd"):
            raise ValueError(f"--compression {self.compression}: use none, lz4 or zstd")
        if self.disk_size < 4096 or self.disk_size % 512:
            raise ValueError(f"--disk-size {self.disk_size}: use a multiple of 512 bytes, at least 4 KiB")
        return g
