"""The board is defined once (kvmscope.board): the guests' generated include, the
compiled core and the docs must agree with it, and the bus must refuse regions
that overlap (a hidden device would silently swallow a guest's accesses)."""
import os
import re
import shutil
import struct
import subprocess

import pytest

from kvmscope import board, guests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUEST_SRC = os.path.join(ROOT, "pyx", "guests")
DOCS = os.path.join(ROOT, "docs", "guests.md")


@pytest.fixture(scope="module")
def core():
    return pytest.importorskip("kvmscope._core", reason="the compiled core is not built")


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


# ---- generated files ------------------------------------------------------------
@pytest.mark.parametrize("rel", sorted(board.GENERATED_FILES))
def test_generated_files_match_board(rel):
    path = os.path.join(ROOT, *rel.split("/"))
    assert os.path.exists(path), f"{rel} is missing: build the package (pip install -e . or setup.py build_ext)"
    text = _read(path)
    assert text.startswith(f"# {board.GENERATED}\n")
    assert text == board.GENERATED_FILES[rel](), f"{rel} is stale: rebuild so that it is generated again"


def test_guest_include_defines_every_constant_and_parameter_field():
    sets = dict(re.findall(r"^\s*\.set (\w+), (.+?)\s+#", board.asm_include(), re.M))
    for name, c in board.CONSTANTS.items():
        assert int(sets[name], 0) == c.value, name
    for f in board.PARAMS_FIELDS:
        assert sets[f"P_{f.name.upper()}"] == f"PARAMS_ADDR + {board.PARAMS_OFFSETS[f.name]}"


@pytest.mark.skipif(not (shutil.which("as") and shutil.which("ld")), reason="GNU as/ld not installed")
def test_installed_guests_are_assembled_from_the_current_board(tmp_path):
    for name, guest in guests.GUESTS.items():
        obj, out = tmp_path / f"{name}.o", tmp_path / f"{name}.bin"
        subprocess.run(["as", "--32", "-I", GUEST_SRC, "-o", str(obj), os.path.join(GUEST_SRC, name + ".S")],
                       check=True)
        subprocess.run(["ld", "-m", "elf_i386", "-N", "-e", "_start", f"-Ttext={board.CODE_ADDR:#x}",
                        "--oformat", "binary", "-o", str(out), str(obj)], check=True)
        assert out.read_bytes() == guest.image(), f"{name}: installed binary differs from the sources"
        assert len(guest.image()) <= board.CODE_MAX


# ---- the compiled core ----------------------------------------------------------
def test_core_constants_match_board(core):
    compiled = core.board_constants()
    for name, c in board.CONSTANTS.items():
        assert compiled[name] == c.value, f"core has {name} = {compiled[name]:#x}, board.py {c.value:#x}"
    assert compiled["core.irq_sources"] == len(board.IRQ_SOURCES)
    assert compiled["core.scratch_bytes"] == board.SCRATCH_MMIO_SIZE
    assert board.SCRATCH_MMIO_SIZE % board.SCRATCH_REGISTER_BYTES == 0


# ---- the parameter block --------------------------------------------------------
def _doc_section(title):
    text = _read(DOCS)
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else len(text)]


def test_parameter_block_packs_to_the_documented_offsets():
    rows = [(int(o), int(s), name) for o, s, name in
            re.findall(r"^\| (\d+) \| (\d+) \| `(\w+)` \| .+ \|$", _doc_section("Parameter block"), re.M)]
    sizes = {"uint32_t": 4, "uint64_t": 8}
    assert rows == [(board.PARAMS_OFFSETS[f.name], sizes[f.ctype], f.name) for f in board.PARAMS_FIELDS]
    assert board.PARAMS_SIZE == rows[-1][0] + rows[-1][1] == 44
    values = {"nvcpus": 3, "iterations": 0x1122334455667788, "seed": 2 ** 64 - 1, "mem_size": 16 << 20,
              "timer_period_us": 1000, "region": 1024, "port_burst": 8}
    data = board.pack_params(**values)
    assert len(data) == board.PARAMS_SIZE
    assert data[:4] == b"KVMS"
    for (offset, size, _), f in zip(rows, board.PARAMS_FIELDS):
        got, = struct.unpack_from("<I" if size == 4 else "<Q", data, offset)
        assert got == values.get(f.name, board.PARAMS_MAGIC), f.name
        assert offset % size == 0, f"{f.name} is not naturally aligned"
    assert board.unpack_params(data) == dict(values, magic=board.PARAMS_MAGIC)


@pytest.mark.parametrize("values, message", [
    ({"nvcpus": 1}, "missing field(s) iterations"),
    ({"nvcpus": 1, "iterations": 1, "seed": 1, "mem_size": 1, "timer_period_us": 1, "region": 1,
      "port_burst": 1, "vcpus": 2}, "unknown field(s) vcpus"),
    ({"nvcpus": 2 ** 32, "iterations": 1, "seed": 1, "mem_size": 1, "timer_period_us": 1, "region": 1,
      "port_burst": 1}, "nvcpus=4294967296 does not fit uint32_t"),
    ({"nvcpus": 1, "iterations": 1, "seed": -1, "mem_size": 1, "timer_period_us": 1, "region": 1,
      "port_burst": 1}, "seed=-1 does not fit uint64_t"),
])
def test_pack_params_names_a_bad_field(values, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        board.pack_params(**values)


# ---- the guests: names, not copies of the board's numbers -------------------------
def _guest_sources():
    return sorted(os.path.join(GUEST_SRC, n) for n in os.listdir(GUEST_SRC)
                  if n.endswith((".S", ".inc")) and n != "board.inc")


def _board_addresses():
    """Numbers that can only be a board address: ports, MMIO and register addresses,
    the memory map's areas, the parameter fields.  (PARAMS_ADDR and CODE_ADDR are
    left out: 0x1000 and 0x10000 are also ordinary sizes.)"""
    out = {}
    for r in board.REGIONS:
        out[r.base] = r.name
        for reg, offset in board.REGISTERS[r.name].items():
            if offset:
                out[r.base + offset] = f"{r.name} register {reg}"
    for name in ("STACK_TOP", "IDT_BASE", "DMA_BASE", "VERSIONS_BASE", "RAM_MAX", "IOAPIC_MMIO"):
        out[board.CONSTANTS[name].value] = name
    for f in board.PARAMS_FIELDS:
        out[board.PARAMS_ADDR + board.PARAMS_OFFSETS[f.name]] = f"P_{f.name.upper()}"
    del out[board.PARAMS_ADDR]
    return out


def test_guests_hold_no_literal_board_numbers():
    forbidden = _board_addresses()
    assert board.DEBUG_PORT in forbidden and board.LAPIC_MMIO + board.LAPIC_REG_EOI in forbidden
    defined = set(board.CONSTANTS) | {f"P_{f.name.upper()}" for f in board.PARAMS_FIELDS}
    found = []
    for path in _guest_sources():
        for lineno, line in enumerate(_read(path).splitlines(), 1):
            code = line.split("#", 1)[0]
            where = f"{os.path.basename(path)}:{lineno}: {line.strip()}"
            for literal in re.findall(r"(?<![\w.])(0x[0-9a-fA-F]+|\d+)(?!\w)", code):
                if int(literal, 0) in forbidden:
                    found.append(f"{where}  ({literal} is {forbidden[int(literal, 0)]})")
            m = re.match(r"\s*\.(?:set|equ)\s+(\w+)", code)
            if m and m.group(1) in defined:
                found.append(f"{where}  (redefines board.inc's {m.group(1)})")
    assert not found, "board numbers written out in the guests:\n" + "\n".join(found)


def test_the_literal_check_sees_a_copied_port():
    line = "        mov $0x560, %dx"
    assert [int(x, 0) for x in re.findall(r"(?<![\w.])(0x[0-9a-fA-F]+|\d+)(?!\w)", line)
            if int(x, 0) in _board_addresses()] == [board.BLK_PORT]


# ---- the docs -------------------------------------------------------------------
def test_docs_place_the_devices_and_memory_where_the_board_does():
    devices = _doc_section("Devices")
    for r in board.REGIONS:
        row = re.search(rf"^\| `{r.name}` \|(.+)$", devices, re.M)
        assert row, f"docs/guests.md: no row for {r.name}"
        assert f"`{r.base:#x}`" in row.group(1), f"docs/guests.md: {r.name} is not at {r.base:#x}"
    assert f"vector `{board.TIMER_VECTOR:#x}`" in devices and f"vector `{board.BLK_VECTOR:#x}`" in devices
    memory = _doc_section("Memory map (guest-physical)")
    for name in ("PARAMS_ADDR", "CODE_ADDR", "STACK_TOP", "IDT_BASE", "DMA_BASE", "VERSIONS_BASE"):
        assert f"`{getattr(board, name):#x}" in memory, name
    assert "pyx/board.py" in _read(DOCS)


# ---- the bus --------------------------------------------------------------------
def test_the_board_regions_fit_on_one_bus_and_are_found(core):
    regions = [tuple(r) for r in board.REGIONS]
    lookups, want = [], []
    for r in board.REGIONS:
        lookups += [(r.space, r.base, 1), (r.space, r.base + r.size - 1, 1), (r.space, r.base, r.size),
                    (r.space, r.base - 1, 1), (r.space, r.base + r.size, 1), (r.space, r.base + r.size - 1, 2)]
        want += [r.name, r.name, r.name, None, None, None]
    table, found = core.bus_selftest(regions, lookups, mem_size=16 << 20)
    assert table == regions
    assert found == want


@pytest.mark.parametrize("second", [
    ("b", "pio", 0x564, 8),         # overlaps the end of a
    ("b", "pio", 0x55c, 8),         # overlaps the start of a
    ("b", "pio", 0x566, 1),         # inside a
    ("b", "pio", 0x500, 0x100),     # holds a
    ("b", "pio", 0x560, 8),         # the same range
])
def test_bus_refuses_an_overlapping_region_naming_both(core, second):
    with pytest.raises(core.KvmscopeError) as e:
        core.bus_selftest([("a", "pio", 0x560, 8), second])
    msg = str(e.value)
    assert msg.startswith("bus region b (PIO ") and "overlaps a (PIO 0x560..0x567)" in msg


def test_bus_refuses_a_board_region_registered_twice(core):
    scratch = next(tuple(r) for r in board.REGIONS if r.name == "scratch")
    with pytest.raises(core.KvmscopeError, match=r"bus region scratch2 \(MMIO 0xd0000800\.\.0xd00017ff\) "
                                                 r"overlaps scratch \(MMIO 0xd0000000\.\.0xd0000fff\)"):
        core.bus_selftest([scratch, ("scratch2", "mmio", board.SCRATCH_MMIO + 0x800, 0x1000)], mem_size=1 << 20)


def test_bus_takes_adjacent_regions_and_the_same_numbers_in_the_other_space(core):
    regions = [("a", "pio", 0x10, 8), ("b", "pio", 0x18, 8), ("c", "mmio", 0x10, 16)]
    table, found = core.bus_selftest(regions, [("pio", 0x17, 1), ("pio", 0x18, 1), ("mmio", 0x18, 8),
                                               ("pio", 0x16, 4)])
    assert table == regions
    assert found == ["a", "b", "c", None]       # an access across two regions belongs to neither


@pytest.mark.parametrize("region, mem_size, message", [
    (("z", "pio", 0x10, 0), 0, "bus region z: bad range"),
    (("p", "pio", 0xfff8, 0x10), 0, "bus region p (PIO 0xfff8..0x10007) is outside the 16-bit port space"),
    (("m", "mmio", 0xff000, 0x1000), 1 << 20, "MMIO region m at 0xff000 overlaps guest RAM"),
    (("w", "mmio", 2 ** 64 - 0x10, 0x20), 0, "bus region w: bad range"),
])
def test_bus_refuses_a_bad_region(core, region, mem_size, message):
    with pytest.raises(core.KvmscopeError, match=re.escape(message)):
        core.bus_selftest([region], mem_size=mem_size)


@pytest.mark.kvm
@pytest.mark.parametrize("irqchip", ["kernel", "user"])
def test_machine_puts_the_board_regions_on_its_bus(core, irqchip):
    machine = core.Machine(core.Kvm(os.environ.get("KVMSCOPE_KVM_DEVICE", "/dev/kvm")), core.Tracer(1024),
                           1, 16 << 20, irqchip=irqchip)
    want = [tuple(r) for r in board.REGIONS if r.name != "lapic" or irqchip == "user"]
    assert core.bus_regions(machine) == want
    assert machine.devices == [r[0] for r in want]
