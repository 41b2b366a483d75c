# The bus: the board's PIO and MMIO regions, their registration and lookup, and the
# little-endian access helpers of the device models.  The device models are the
# dev_*.pxi parts; Machine registers them (machine.pxi); kvmscope.board places them.

cdef uint32_t UNASSIGNED = 0xffffffff     # `device` of an access no region claimed
cdef uint32_t NOT_IO = 0xfffffffe         # `device` of a non-I/O exit

cdef enum:
    KS_PIO_SPACE_SIZE = 0x10000         # port numbers are 16-bit


cdef inline int bus_find(ks_machine *m, int space, uint64_t addr, uint32_t size) noexcept nogil:
    """Index of the region that holds [addr, addr+size), or -1."""
    cdef int i
    cdef ks_region *r
    for i in range(m.nregions):
        r = &m.regions[i]
        if r.space == space and addr >= r.base and addr - r.base < r.size and size <= r.size - (addr - r.base):
            return i
    return -1


cdef inline uint64_t load_le(const uint8_t *data, uint32_t size) noexcept nogil:
    cdef uint64_t v = 0
    if size > 8:
        size = 8
    memcpy(&v, data, size)
    return v


cdef inline void store_le(uint8_t *data, uint32_t size, uint64_t v) noexcept nogil:
    if size > 8:
        size = 8
    memcpy(data, &v, size)


cdef str bus__describe(str name, int space, uint64_t base, uint64_t size):
    return f"{name} ({'PIO' if space == KS_SPACE_PIO else 'MMIO'} {base:#x}..{base + size - 1:#x})"


cdef int bus_add(ks_machine *m, list names, str name, int space, uint64_t base, uint64_t size,
                 ks_io_fn fn, void *opaque, bint lockless, uint32_t callsite) except -1:
    """Put region ``name`` on the bus of ``m``; ``names`` holds the names of the regions
    already on it, by index, and gets ``name`` appended.

    A region that overlaps one already on the bus in the same space is refused with
    an error naming both: the lookup takes the first match, so an overlap would
    silently hide part of a device.
    """
    cdef int i
    cdef ks_region *r
    if len(names) != m.nregions:
        raise KvmscopeError(f"bus: {len(names)} region names for {m.nregions} regions")
    if m.nregions >= KS_MAX_REGIONS:
        raise KvmscopeError("too many device regions")
    if space != KS_SPACE_PIO and space != KS_SPACE_MMIO:
        raise KvmscopeError(f"bus region {name}: unknown address space {space}")
    if size == 0 or base + size < base:
        raise KvmscopeError(f"bus region {name}: bad range base {base:#x} size {size:#x}")
    if space == KS_SPACE_PIO and base + size > KS_PIO_SPACE_SIZE:
        raise KvmscopeError(f"bus region {bus__describe(name, space, base, size)} is outside the 16-bit port space")
    if space == KS_SPACE_MMIO and base < m.mem_size:
        raise KvmscopeError(f"MMIO region {name} at {base:#x} overlaps guest RAM")
    for i in range(m.nregions):
        r = &m.regions[i]
        if r.space == space and base < r.base + r.size and r.base < base + size:
            raise KvmscopeError(f"bus region {bus__describe(name, space, base, size)} overlaps "
                                f"{bus__describe(names[i], r.space, r.base, r.size)}")
    r = &m.regions[m.nregions]
    r.space = space
    r.base = base
    r.size = size
    r.fn = fn
    r.opaque = opaque
    r.lockless = lockless
    r.callsite = callsite
    names.append(name)
    m.nregions += 1
    return 0


cdef list bus__table(ks_machine *m, list names):
    cdef int i
    return [(names[i], "pio" if m.regions[i].space == KS_SPACE_PIO else "mmio",
             m.regions[i].base, m.regions[i].size) for i in range(m.nregions)]


cdef int bus__null_access(void *opaque, ks_vcpu *vcpu, uint64_t offset, uint8_t *data,
                          uint32_t size, int is_write) noexcept nogil:
    return 0


def bus_selftest(regions, lookups=(), uint64_t mem_size=0):
    """Build a bus in memory with the bus's own registration and lookup (no KVM needed).

    Parameters
    ----------
    regions : iterable of (name, space, base, size)
        Registered in order, ``space`` ``"pio"`` or ``"mmio"``; a refused region
        raises the bus's error (``KvmscopeError``).
    lookups : iterable of (space, addr, size)
        Accesses to look up once every region is registered.
    mem_size : int
        Bytes of guest RAM (MMIO regions must lie above).

    Returns
    -------
    (list, list)
        The bus's table as (name, space, base, size) tuples, and for each lookup
        the name of the region that holds it, or None.
    """
    cdef ks_machine *m = <ks_machine *>calloc(1, sizeof(ks_machine))
    cdef list names = []
    cdef int idx
    spaces = {"pio": KS_SPACE_PIO, "mmio": KS_SPACE_MMIO}
    if m == NULL:
        raise MemoryError()
    try:
        m.mem_size = mem_size
        for name, space, base, size in regions:
            bus_add(m, names, name, spaces[space], base, size, bus__null_access, NULL, False, 0)
        found = []
        for space, addr, size in lookups:
            idx = bus_find(m, spaces[space], addr, size)
            found.append(names[idx] if idx >= 0 else None)
        return bus__table(m, names), found
    finally:
        free(m)


def bus_regions(Machine machine):
    """The bus of ``machine`` as (name, space, base, size) tuples, in registration order."""
    return bus__table(machine.m, machine.devices)


def board_constants():
    """The board's constants as compiled into the core, to check against ``kvmscope.board``.

    Returns
    -------
    dict
        ``kvmscope.board`` constant name -> compiled value, plus ``core.*``: sizes
        of the core's structures that must agree with the board.
    """
    cdef ks_machine *m = NULL
    out = board__compiled()
    out["core.irq_sources"] = KS_IRQ_SOURCES
    out["core.scratch_bytes"] = sizeof(m.scratch)
    return out
