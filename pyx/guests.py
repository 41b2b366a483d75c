"""Catalogue of the built-in guest programs (assembled from pyx/guests/*.S at install time)."""
import dataclasses
import os

GUEST_DIR = os.path.join(os.path.dirname(__file__), "guests")


@dataclasses.dataclass(frozen=True)
class Guest:
    """A built-in guest program and what it does."""

    name: str
    summary: str
    default_iterations: int = 100000
    uses_disk: bool = False
    status_is_count: str = None     # the exit status is a count of this, not an error count
    min_memory: int = 1 << 20       # RAM the guest's memory map needs (docs/guests.md)

    @property
    def path(self):
        return os.path.join(GUEST_DIR, self.name + ".bin")

    def image(self):
        """The flat binary, read from the installed package."""
        try:
            with open(self.path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise FileNotFoundError(
                f"guest binary {self.path} is missing: reinstall kvmscope (pip install .) "
                "so that the guests are assembled") from None


GUESTS = {g.name: g for g in [
    Guest("pio-storm", "each vCPU writes the debug port (0x80) N times, then exits"),
    Guest("mmio-storm", "each vCPU writes and reads back its scratch MMIO register N times; "
                        "exit status = mismatches"),
    Guest("serial-hello", "vCPU 0 prints a greeting N times on the serial console", 1),
    Guest("disk-io", "each vCPU does N random block reads/writes over its part of the disk image "
                     "(DMA through the AIO pool, completion interrupts) and checks what it reads; "
                     "exit status = mismatches", 200, uses_disk=True, min_memory=4 << 20),
    Guest("timer-hlt", "each vCPU halts between timer-device interrupts until it counted N ticks; "
                       "exit status = ticks", 50, status_is_count="ticks", min_memory=2 << 20),
    Guest("mixed", "disk-io plus a periodic timer and a burst of port writes per request: vCPUs, "
                   "timers and AIO completions compete for the BQL", 200, uses_disk=True,
          min_memory=4 << 20),
    Guest("disk-bad-dma", "programs DMA outside guest RAM and other bad block requests; exit status = "
                          "requests not refused with the right error", 0, uses_disk=True, min_memory=4 << 20),
    Guest("hostile", "N random attacks per vCPU on every device: bad values, widths, string I/O, MMIO "
                     "across region and page ends, bad block requests and DMA addresses; exit status = "
                     "requests not refused with the right status", 5000, uses_disk=True, min_memory=8 << 20),
    Guest("triple-fault", "loads an empty IDT and raises an exception: a triple fault "
                          "(tests the fatal-exit path)", 0),
]}


def get(name):
    """Look up a guest by name; unknown names give a one-line error listing the known ones."""
    try:
        return GUESTS[name]
    except KeyError:
        raise ValueError(f"unknown guest {name!r}; built-in guests: {', '.join(GUESTS)}") from None
