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
    listed: bool = True

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
    Guest("triple-fault", "loads an empty IDT and raises an exception: a triple fault "
                          "(tests the fatal-exit path)", 0),
]}


def get(name):
    """Look up a guest by name; unknown names give a one-line error listing the known ones."""
    try:
        return GUESTS[name]
    except KeyError:
        raise ValueError(f"unknown guest {name!r}; built-in guests: {', '.join(GUESTS)}") from None
