"""Hand-made timelines shared by the analysis tests; every figure a test
expects from them is worked out in the comments here."""
import pandas as pd

#: Two vCPUs and the drain thread.
TWO_VCPUS_THREADS = pd.DataFrame({"thread": [1, 2, 3], "tid": [101, 102, 103],
                                  "name": ["vcpu0", "vcpu1", "drain"],
                                  "role": ["vcpu", "vcpu", "drain"]})
# Two vCPUs trade the BQL three times; vcpu1 waits twice (60 and 70 ns).
# Each acquisition sits inside an exit of its vCPU.  The trace starts at 1000 ns.
TWO_VCPUS_EXITS = pd.DataFrame({"thread": [1, 2, 1, 2],
                                "exit_ns": [1000, 1050, 2000, 2050],
                                "entry_ns": [1400, 1600, 2300, 2500],
                                "addr": [0x80, 0x3f8, 0x80, 0x3f8], "size": 1,
                                "is_write": True, "data": [7, 65, 8, 66],
                                "device": ["debugport", "serial"] * 2})
TWO_VCPUS_LOCKS = pd.DataFrame({"thread": [1, 2, 1, 2], "callsite": "vcpu:io",
                                "request_ns": [1100, 1150, 2100, 2150],
                                "acquired_ns": [1100, 1210, 2100, 2220],
                                "released_ns": [1200, 1500, 2200, 2400]})

#: A vCPU and the main loop.
VCPU_MAIN_THREADS = pd.DataFrame({"thread": [1, 2], "tid": [101, 102],
                                  "name": ["vcpu0", "main"], "role": ["vcpu", "main"]})
# vcpu0 holds [0,100]; main waits [50,120] and holds [120,150]; vcpu0 waits
# [130,160] and holds [160,200], then again [300,310] uncontended; main
# takes it at 320 without waiting.  Waits 70 (main) and 30 (vcpu0); holds
# 100, 30, 40, 10, 10; hand-offs at rows 1, 2, 4.
VCPU_MAIN_LOCKS = pd.DataFrame({
    "thread": [1, 2, 1, 1, 2],
    "callsite": ["vcpu:io", "main:dispatch", "vcpu:io", "vcpu:mmio", "main:dispatch"],
    "request_ns": [0, 50, 130, 300, 320],
    "acquired_ns": [0, 120, 160, 300, 320],
    "released_ns": [100, 150, 200, 310, 330],
})
