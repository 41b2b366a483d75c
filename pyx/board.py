"""The board every kvmscope guest runs on, defined once (docs/guests.md).

Memory map, I/O ports and MMIO regions, interrupt vectors, device registers,
block status codes and the parameter block the host writes into guest memory
before the vCPUs start.  Pure Python, standard library only: ``setup.py``
loads this file by path at build time and generates from it

- ``pyx/guests/board.inc``: ``.set NAME, VALUE`` for every constant, and
  ``P_<FIELD>`` (the guest-physical address of each parameter block field),
  included by the guests' ``common.inc``;
- ``pyx/board.pxi``: every constant as a C constant ``KS_<NAME>`` for the
  core's bus and device models, and ``board__compiled()``, which returns the
  values compiled into the core (``kvmscope._core.board_constants()``).

The recorder packs the parameter block with :func:`pack_params`.
"""
import collections
import os
import struct

#: Header of the generated files.
GENERATED = "generated from pyx/board.py: do not edit"

Const = collections.namedtuple("Const", "name value meaning section")
#: Every constant of the board, name -> Const, in board order.
CONSTANTS = {}
_section = [""]


def _sect(title):
    _section[0] = title


def _const(name, value, meaning):
    if name in CONSTANTS:
        raise ValueError(f"board constant {name} defined twice")
    CONSTANTS[name] = Const(name, value, meaning, _section[0])
    return value


# ---- memory map (guest-physical); RAM is --memory bytes from address 0 -------
_sect("memory map (guest-physical)")
PARAMS_ADDR = _const("PARAMS_ADDR", 0x1000, "parameter block; EBX at entry")
CODE_ADDR = _const("CODE_ADDR", 0x10000, "guest code, loaded here; each vCPU starts here")
CODE_MAX = _const("CODE_MAX", 0x30000, "bytes of the code area")
STACK_TOP = _const("STACK_TOP", 0x80000, "vCPU i's stack page ends at STACK_TOP - i * STACK_PER_VCPU")
STACK_SHIFT = _const("STACK_SHIFT", 12, "log2(STACK_PER_VCPU)")
STACK_PER_VCPU = _const("STACK_PER_VCPU", 1 << STACK_SHIFT,
                        "stack page per vCPU; its bottom bytes hold per-vCPU data")
IDT_BASE = _const("IDT_BASE", 0x100000, "vCPU i's IDT at IDT_BASE + i * IDT_PER_VCPU")
IDT_SHIFT = _const("IDT_SHIFT", 11, "log2(IDT_PER_VCPU)")
IDT_PER_VCPU = _const("IDT_PER_VCPU", 1 << IDT_SHIFT, "one IDT: 256 gates of 8 bytes")
DMA_BASE = _const("DMA_BASE", 0x200000, "vCPU i's DMA buffer at DMA_BASE + i * DMA_PER_VCPU")
DMA_SHIFT = _const("DMA_SHIFT", 12, "log2(DMA_PER_VCPU)")
DMA_PER_VCPU = _const("DMA_PER_VCPU", 1 << DMA_SHIFT, "DMA buffer per vCPU")
VERSIONS_BASE = _const("VERSIONS_BASE", 0x300000,
                       "vCPU i's sector version table at VERSIONS_BASE + i * VERSIONS_PER_VCPU")
VERSIONS_SHIFT = _const("VERSIONS_SHIFT", 12, "log2(VERSIONS_PER_VCPU)")
VERSIONS_PER_VCPU = _const("VERSIONS_PER_VCPU", 1 << VERSIONS_SHIFT,
                           "sector version table per vCPU (1024 sectors)")
RAM_MAX = _const("RAM_MAX", 0xc0000000, "RAM ends at or below here (3 GiB); MMIO above")
IOAPIC_MMIO = _const("IOAPIC_MMIO", 0xfec00000, "IOAPIC page (in-kernel irqchip only)")

# ---- devices: I/O ports and MMIO pages, their registers (offsets) -----------
_sect("debug port: write stores a byte, read returns the last one")
DEBUG_PORT = _const("DEBUG_PORT", 0x80, "PIO")
DEBUG_PORT_SIZE = _const("DEBUG_PORT_SIZE", 1, "ports")

_sect("exit device: a write ends this vCPU's run with that status")
EXIT_PORT = _const("EXIT_PORT", 0x501, "PIO")
EXIT_PORT_SIZE = _const("EXIT_PORT_SIZE", 4, "ports")
EXIT_REG_STATUS = _const("EXIT_REG_STATUS", 0, "write: the vCPU's exit status")

_sect("serial port: 16550 subset")
SERIAL_PORT = _const("SERIAL_PORT", 0x3f8, "PIO")
SERIAL_PORT_SIZE = _const("SERIAL_PORT_SIZE", 8, "ports")
SERIAL_REG_THR = _const("SERIAL_REG_THR", 0, "write: transmit a byte")
SERIAL_REG_LSR = _const("SERIAL_REG_LSR", 5, "read: line status, always ready")
SERIAL_LSR_THRE = _const("SERIAL_LSR_THRE", 0x20, "LSR: transmitter holding register empty")
SERIAL_LSR_TEMT = _const("SERIAL_LSR_TEMT", 0x40, "LSR: transmitter empty")

_sect("scratch page: read/write 64-bit registers")
SCRATCH_MMIO = _const("SCRATCH_MMIO", 0xd0000000, "MMIO, not RAM")
SCRATCH_MMIO_SIZE = _const("SCRATCH_MMIO_SIZE", 0x1000, "bytes")
SCRATCH_REGISTER_BYTES = _const("SCRATCH_REGISTER_BYTES", 8, "bytes per register")

_sect("timer device: periodic interrupts, banked per vCPU")
TIMERDEV_PORT = _const("TIMERDEV_PORT", 0x540, "PIO")
TIMERDEV_PORT_SIZE = _const("TIMERDEV_PORT_SIZE", 8, "ports")
TIMERDEV_REG_PERIOD = _const("TIMERDEV_REG_PERIOD", 0, "period in us (0 stops)")
TIMERDEV_REG_ACK = _const("TIMERDEV_REG_ACK", 4, "write: acknowledge the last tick; read: ticks raised")

_sect("block device: DMA between guest RAM and the disk image, banked per vCPU")
BLK_PORT = _const("BLK_PORT", 0x560, "PIO")
BLK_PORT_SIZE = _const("BLK_PORT_SIZE", 0x20, "ports")
BLK_REG_CMD = _const("BLK_REG_CMD", 0x00, "write: a command, which starts the request")
BLK_REG_SECTOR = _const("BLK_REG_SECTOR", 0x04, "first sector")
BLK_REG_COUNT = _const("BLK_REG_COUNT", 0x08, "sectors")
BLK_REG_BUF = _const("BLK_REG_BUF", 0x0c, "guest-physical buffer address")
BLK_REG_STATUS = _const("BLK_REG_STATUS", 0x10, "read: the status of the last command")
BLK_REG_SIZE = _const("BLK_REG_SIZE", 0x14, "read: image size in sectors")
BLK_CMD_READ = _const("BLK_CMD_READ", 1, "command: image -> guest RAM")
BLK_CMD_WRITE = _const("BLK_CMD_WRITE", 2, "command: guest RAM -> image")
BLK_CMD_FLUSH = _const("BLK_CMD_FLUSH", 3, "command: fdatasync the image")
BLK_STATUS_OK = _const("BLK_STATUS_OK", 0x00, "done")
BLK_STATUS_BUSY = _const("BLK_STATUS_BUSY", 0x01, "a request is in flight")
BLK_STATUS_BAD_COMMAND = _const("BLK_STATUS_BAD_COMMAND", 0x10, "unknown command")
BLK_STATUS_BAD_RANGE = _const("BLK_STATUS_BAD_RANGE", 0x11, "sector range outside the image")
BLK_STATUS_BAD_DMA = _const("BLK_STATUS_BAD_DMA", 0x12, "buffer not entirely inside guest RAM")
BLK_STATUS_IO_ERROR = _const("BLK_STATUS_IO_ERROR", 0x13, "I/O error")
BLK_STATUS_BAD_COUNT = _const("BLK_STATUS_BAD_COUNT", 0x14, "count 0 or over BLK_MAX_SECTORS")
BLK_STATUS_NO_DISK = _const("BLK_STATUS_NO_DISK", 0x15, "no disk image")
BLK_SECTOR_SHIFT = _const("BLK_SECTOR_SHIFT", 9, "log2(BLK_SECTOR_SIZE)")
BLK_SECTOR_SIZE = _const("BLK_SECTOR_SIZE", 1 << BLK_SECTOR_SHIFT, "bytes per sector")
BLK_MAX_SECTORS = _const("BLK_MAX_SECTORS", 256, "sectors per request at most")

_sect("local APIC (in-kernel, or with --irqchip user a stub that records EOIs)")
LAPIC_MMIO = _const("LAPIC_MMIO", 0xfee00000, "MMIO")
LAPIC_MMIO_SIZE = _const("LAPIC_MMIO_SIZE", 0x1000, "bytes")
LAPIC_REG_EOI = _const("LAPIC_REG_EOI", 0xb0, "write: end of interrupt")
LAPIC_REG_SVR = _const("LAPIC_REG_SVR", 0xf0, "spurious interrupt vector register")

# ---- interrupts: source s raises vector VECTOR_BASE + s on one vCPU ----------
_sect("interrupts")
VECTOR_BASE = _const("VECTOR_BASE", 0x30, "vector of interrupt source 0")
IRQ_TIMER = _const("IRQ_TIMER", 0, "source: timer device tick")
IRQ_BLK = _const("IRQ_BLK", 1, "source: block command done")
TIMER_VECTOR = _const("TIMER_VECTOR", VECTOR_BASE + IRQ_TIMER, "vector of a timer tick")
BLK_VECTOR = _const("BLK_VECTOR", VECTOR_BASE + IRQ_BLK, "vector of a block completion")

# ---- parameter block at PARAMS_ADDR ----------------------------------------
_sect("parameter block")
PARAMS_MAGIC = _const("PARAMS_MAGIC", int.from_bytes(b"KVMS", "little"), 'first field: "KVMS"')

Field = collections.namedtuple("Field", "name ctype meaning")
#: The parameter block, little-endian, in order, no padding: (name, C type, meaning).
PARAMS_FIELDS = (
    Field("magic", "uint32_t", 'PARAMS_MAGIC ("KVMS")'),
    Field("nvcpus", "uint32_t", "number of vCPUs"),
    Field("iterations", "uint64_t", "--iterations (guests use the low 32 bits)"),
    Field("seed", "uint64_t", "--seed"),
    Field("mem_size", "uint64_t", "RAM size in bytes"),
    Field("timer_period_us", "uint32_t", "--timer-period-us"),
    Field("region", "uint32_t", "disk sectors owned by each vCPU"),
    Field("port_burst", "uint32_t", "--port-burst"),
)
_STRUCT_CODES = {"uint8_t": "B", "uint16_t": "H", "uint32_t": "I", "uint64_t": "Q"}

#: Region = a device's place on the bus: name (the trace's device name),
#: space ("pio" or "mmio"), base, size.
Region = collections.namedtuple("Region", "name space base size")
#: The board's bus regions, in registration order (``lapic`` only with --irqchip user).
REGIONS = (
    Region("debugport", "pio", DEBUG_PORT, DEBUG_PORT_SIZE),
    Region("exitdev", "pio", EXIT_PORT, EXIT_PORT_SIZE),
    Region("serial", "pio", SERIAL_PORT, SERIAL_PORT_SIZE),
    Region("scratch", "mmio", SCRATCH_MMIO, SCRATCH_MMIO_SIZE),
    Region("timerdev", "pio", TIMERDEV_PORT, TIMERDEV_PORT_SIZE),
    Region("blk", "pio", BLK_PORT, BLK_PORT_SIZE),
    Region("lapic", "mmio", LAPIC_MMIO, LAPIC_MMIO_SIZE),
)


def _named(prefix):
    return {name[len(prefix):].lower(): c.value for name, c in CONSTANTS.items() if name.startswith(prefix)}


#: Each region's registers, region name -> {register: offset} (its ``<PREFIX>_REG_*`` constants).
REGISTERS = {name: _named(prefix + "_REG_") for name, prefix in (
    ("debugport", "DEBUG"), ("exitdev", "EXIT"), ("serial", "SERIAL"), ("scratch", "SCRATCH"),
    ("timerdev", "TIMERDEV"), ("blk", "BLK"), ("lapic", "LAPIC"))}
#: Interrupt sources by source number (the ``IRQ_*`` constants).
IRQ_SOURCES = tuple(sorted(_named("IRQ_"), key=_named("IRQ_").get))
#: Block status codes, name -> value (``BLK_STATUS_*``).
BLK_STATUS = _named("BLK_STATUS_")
#: Block commands, name -> value (``BLK_CMD_*``).
BLK_COMMANDS = _named("BLK_CMD_")


def params_struct():
    """The parameter block's layout as a :class:`struct.Struct`.

    Returns
    -------
    struct.Struct
        Little-endian, without padding, one item per entry of ``PARAMS_FIELDS``.
    """
    return struct.Struct("<" + "".join(_STRUCT_CODES[f.ctype] for f in PARAMS_FIELDS))


def _offsets():
    out, off = {}, 0
    for f in PARAMS_FIELDS:
        out[f.name] = off
        off += struct.calcsize("<" + _STRUCT_CODES[f.ctype])
    return out


#: Byte offset of each field in the parameter block.
PARAMS_OFFSETS = _offsets()
#: Bytes of the parameter block.
PARAMS_SIZE = params_struct().size


def pack_params(**values):
    """The parameter block's bytes, to be written at ``PARAMS_ADDR``.

    Parameters
    ----------
    **values : int
        One value per field of ``PARAMS_FIELDS`` but ``magic``, which defaults
        to ``PARAMS_MAGIC``.

    Returns
    -------
    bytes
        ``PARAMS_SIZE`` bytes.

    Raises
    ------
    ValueError
        A field is missing or unknown, or its value does not fit its C type.
    """
    values.setdefault("magic", PARAMS_MAGIC)
    names = [f.name for f in PARAMS_FIELDS]
    unknown = sorted(set(values) - set(names))
    missing = [n for n in names if n not in values]
    if unknown or missing:
        raise ValueError("parameter block: " + "; ".join(
            ([f"unknown field(s) {', '.join(unknown)}"] if unknown else [])
            + ([f"missing field(s) {', '.join(missing)}"] if missing else [])))
    for f in PARAMS_FIELDS:
        v = values[f.name]
        bits = 8 * struct.calcsize(_STRUCT_CODES[f.ctype])
        if not isinstance(v, int) or not 0 <= v < (1 << bits):
            raise ValueError(f"parameter block: {f.name}={v!r} does not fit {f.ctype}")
    return params_struct().pack(*(values[n] for n in names))


def unpack_params(data):
    """The fields of a parameter block, name -> value (the inverse of :func:`pack_params`).

    Parameters
    ----------
    data : bytes-like
        At least ``PARAMS_SIZE`` bytes; the rest is ignored.

    Returns
    -------
    dict
    """
    return dict(zip((f.name for f in PARAMS_FIELDS), params_struct().unpack_from(data)))


# ---- generated files ---------------------------------------------------------
def asm_include():
    """Text of ``pyx/guests/board.inc``: the board for the guests' GNU assembler.

    Returns
    -------
    str
    """
    lines = [f"# {GENERATED}", "# The board every guest runs on (docs/guests.md)."]
    section = None
    for c in CONSTANTS.values():
        if c.section != section:
            section = c.section
            lines += ["", f"# {section}"]
        lines.append(_commented(f"        .set {c.name}, {_num(c.value)}", c.meaning))
    lines += ["", "# parameter block fields (guest-physical addresses)"]
    for f in PARAMS_FIELDS:
        lines.append(_commented(f"        .set P_{f.name.upper()}, PARAMS_ADDR + {PARAMS_OFFSETS[f.name]}",
                                f"{f.ctype}: {f.meaning}"))
    return "\n".join(lines) + "\n"


def _num(value):
    return str(value) if value < 16 else f"{value:#x}"


def _commented(code, comment):
    return code.ljust(47) + " # " + comment


def cython_include():
    """Text of ``pyx/board.pxi``: the board's constants for the core, as C constants ``KS_<NAME>``.

    Returns
    -------
    str
    """
    small = [c for c in CONSTANTS.values() if c.value < 2 ** 31]
    wide = [c for c in CONSTANTS.values() if c.value >= 2 ** 31]
    lines = [f"# {GENERATED}",
             "# The board's constants for the core's bus and device models (docs/guests.md).",
             "", "cdef extern from *:", '    """', f"    /* {GENERATED} */"]
    for c in small:
        lines.append(f"    #define KS_{c.name} {_num(c.value)}")
    for c in wide:
        lines.append(f"    #define KS_{c.name} {c.value:#x}ULL")
    lines += ['    """', "    enum:"]
    for c in small:
        lines.append(_commented(f"        KS_{c.name}", c.meaning))
    for c in wide:
        lines.append(_commented(f"    const uint64_t KS_{c.name}", c.meaning))
    lines += ["", "", "cdef dict board__compiled():",
              '    """The board\'s constants as compiled into the core, by their kvmscope.board names."""',
              "    return {"]
    for c in CONSTANTS.values():
        lines.append(f'        "{c.name}": KS_{c.name},')
    lines.append("    }")
    return "\n".join(lines) + "\n"


#: Generated files, relative to the source tree's root, and their text.
GENERATED_FILES = {
    "pyx/guests/board.inc": asm_include,
    "pyx/board.pxi": cython_include,
}


def write_generated(root):
    """Write the generated files under ``root`` where their text changed.

    Parameters
    ----------
    root : str
        The source tree (the directory of ``setup.py``).

    Returns
    -------
    list of str
        The paths written (unchanged files are left alone, so that their
        timestamps do not trigger a rebuild).
    """
    written = []
    for rel, text_of in GENERATED_FILES.items():
        path = os.path.join(root, *rel.split("/"))
        text = text_of()
        try:
            with open(path, encoding="utf-8") as f:
                if f.read() == text:
                    continue
        except FileNotFoundError:
            pass
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        written.append(path)
    return written
