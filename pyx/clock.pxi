# Run clock: one clock for the whole run, CLOCK_MONOTONIC nanoseconds; hot paths read the TSC.

cdef ks_clock_conv g_clock


def _tsc_invariant():
    try:
        with io.open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return "constant_tsc" in flags and "nonstop_tsc" in flags
    except OSError:
        pass
    return False


cdef void _clock_pair(int64_t *raw, int64_t *mono) noexcept nogil:
    # Take the (tsc, monotonic) pair whose TSC bracket is narrowest, to bound
    # the calibration error by a few tens of nanoseconds.
    cdef int64_t best = 1 << 62, a, b, m
    cdef int i
    for i in range(64):
        a = <int64_t>ks_rdtsc_ordered()
        m = ks_mono_ns()
        b = <int64_t>ks_rdtsc_ordered()
        if b - a < best:
            best = b - a
            raw[0] = a + (b - a) // 2
            mono[0] = m


# The first TSC pair of the current calibration, kept so that the drain can
# refine the frequency over a longer interval once the run has started.
cdef int64_t g_cal_raw0 = 0, g_cal_mono0 = 0
cdef bint g_cal_refined = True


def calibrate_clock(source="auto", double seconds=0.005):
    """Choose and calibrate the run clock.

    A short calibration lets the run start at once; :func:`refine_clock`
    measures the TSC frequency again over a longer interval before the first
    timestamp is converted.

    Parameters
    ----------
    source : {"auto", "tsc", "monotonic"}
        ``auto`` reads the TSC when it is invariant (constant and nonstop),
        else ``CLOCK_MONOTONIC``.
    seconds : float
        First calibration interval for the TSC frequency.

    Returns
    -------
    dict
        ``{"name": "CLOCK_MONOTONIC", "source": ..., "tsc_hz": ...}``
    """
    global g_cal_raw0, g_cal_mono0, g_cal_refined
    cdef int64_t raw0 = 0, mono0 = 0, raw1 = 0, mono1 = 0
    cdef timespec ts
    if source not in ("auto", "tsc", "monotonic"):
        raise ValueError(f"unknown clock source {source!r}: use auto, tsc or monotonic")
    use_tsc = source == "tsc" or (source == "auto" and _tsc_invariant())
    if not use_tsc:
        ks_clock_set_tsc(0)
        g_clock.raw0 = 0
        g_clock.mono0 = 0
        g_clock.mult = 1 << 32
        g_cal_refined = True
        return {"name": "CLOCK_MONOTONIC", "source": "monotonic", "tsc_hz": None}
    ts.tv_sec = <long>seconds
    ts.tv_nsec = <long>((seconds - ts.tv_sec) * 1e9)
    with nogil:
        _clock_pair(&raw0, &mono0)
        nanosleep(&ts, NULL)
        _clock_pair(&raw1, &mono1)
    hz = _set_tsc_conversion(raw0, mono0, raw1, mono1)
    g_cal_raw0 = raw0
    g_cal_mono0 = mono0
    g_cal_refined = False
    ks_clock_set_tsc(1)
    return {"name": "CLOCK_MONOTONIC", "source": "tsc", "tsc_hz": round(hz)}


cdef double _set_tsc_conversion(int64_t raw0, int64_t mono0, int64_t raw1, int64_t mono1) except -1:
    if mono1 <= mono0 or raw1 <= raw0:
        raise KvmscopeError("TSC calibration failed: the TSC did not advance")
    hz = (raw1 - raw0) * 1e9 / (mono1 - mono0)
    g_clock.raw0 = raw0
    g_clock.mono0 = mono0
    g_clock.mult = <uint64_t>((1e9 / hz) * 4294967296.0 + 0.5)
    return hz


def refine_clock(double min_seconds=0.05):
    """Measure the TSC frequency again from the calibration's first pair, once
    at least ``min_seconds`` have passed (waiting for the rest).  Call it
    before the first timestamp is converted; later calls do nothing.

    Returns
    -------
    float or None
        The TSC frequency in Hz, or None when there is nothing to refine.
    """
    global g_cal_refined
    cdef int64_t raw1 = 0, mono1 = 0
    cdef timespec ts
    if g_cal_refined:
        return None
    rest = min_seconds - (ks_mono_ns() - g_cal_mono0) / 1e9
    if rest > 0:
        ts.tv_sec = <long>rest
        ts.tv_nsec = <long>((rest - ts.tv_sec) * 1e9)
        with nogil:
            nanosleep(&ts, NULL)
    with nogil:
        _clock_pair(&raw1, &mono1)
    hz = _set_tsc_conversion(g_cal_raw0, g_cal_mono0, raw1, mono1)
    g_cal_refined = True
    return hz


def now_ns():
    """Current time on the run clock, in nanoseconds."""
    return ks_raw_to_ns(&g_clock, ks_now())


cdef inline double raw_per_ns_c() noexcept nogil:
    if not ks_clock_use_tsc:
        return 1.0
    return 4294967296.0 / g_clock.mult


def raw_per_ns():
    """Clock units per nanosecond (TSC ticks, or 1 for CLOCK_MONOTONIC)."""
    return raw_per_ns_c()
