# C declarations from <linux/kvm.h>: ioctls, capabilities and structures the core uses.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t

cdef extern from "<linux/kvm.h>" nogil:
    enum:
        KVM_API_VERSION
        KVM_GET_API_VERSION
        KVM_CREATE_VM
        KVM_CHECK_EXTENSION
        KVM_GET_VCPU_MMAP_SIZE
        KVM_GET_SUPPORTED_CPUID
        KVM_CREATE_VCPU
        KVM_SET_USER_MEMORY_REGION
        KVM_SET_TSS_ADDR
        KVM_SET_IDENTITY_MAP_ADDR
        KVM_RUN
        KVM_GET_REGS
        KVM_SET_REGS
        KVM_GET_SREGS
        KVM_SET_SREGS
        KVM_SET_CPUID2
        KVM_CREATE_IRQCHIP
        KVM_IRQ_LINE
        KVM_IRQFD
        KVM_INTERRUPT
        KVM_SET_SIGNAL_MASK
        KVM_GET_MP_STATE
        KVM_SET_MP_STATE
        KVM_CREATE_PIT2
        KVM_SET_GSI_ROUTING
        KVM_SIGNAL_MSI
        KVM_CAP_IRQ_ROUTING
        KVM_IRQ_ROUTING_MSI
        KVM_MP_STATE_UNINITIALIZED

        KVM_CAP_USER_MEMORY
        KVM_CAP_SET_TSS_ADDR
        KVM_CAP_EXT_CPUID
        KVM_CAP_SYNC_REGS
        KVM_CAP_IMMEDIATE_EXIT
        KVM_CAP_NR_VCPUS
        KVM_CAP_MAX_VCPUS
        KVM_CAP_IRQCHIP
        KVM_CAP_IRQFD
        KVM_CAP_IOEVENTFD
        KVM_CAP_PIT2
        KVM_CAP_SIGNAL_MSI

        KVM_SYNC_X86_REGS
        KVM_SYNC_X86_SREGS
        KVM_SYNC_X86_EVENTS

        KVM_EXIT_UNKNOWN
        KVM_EXIT_EXCEPTION
        KVM_EXIT_IO
        KVM_EXIT_HYPERCALL
        KVM_EXIT_DEBUG
        KVM_EXIT_HLT
        KVM_EXIT_MMIO
        KVM_EXIT_IRQ_WINDOW_OPEN
        KVM_EXIT_SHUTDOWN
        KVM_EXIT_FAIL_ENTRY
        KVM_EXIT_INTR
        KVM_EXIT_INTERNAL_ERROR
        KVM_EXIT_SYSTEM_EVENT

        KVM_EXIT_IO_IN
        KVM_EXIT_IO_OUT

        KVM_MP_STATE_RUNNABLE
        KVM_MAX_CPUID_ENTRIES "80"

    struct kvm_userspace_memory_region:
        uint32_t slot
        uint32_t flags
        uint64_t guest_phys_addr
        uint64_t memory_size
        uint64_t userspace_addr

    struct kvm_regs:
        uint64_t rax, rbx, rcx, rdx
        uint64_t rsi, rdi, rsp, rbp
        uint64_t r8, r9, r10, r11
        uint64_t r12, r13, r14, r15
        uint64_t rip, rflags

    struct kvm_segment:
        uint64_t base
        uint32_t limit
        uint16_t selector
        uint8_t type
        uint8_t present, dpl, db, s, l, g, avl
        uint8_t unusable

    struct kvm_dtable:
        uint64_t base
        uint16_t limit

    struct kvm_sregs:
        kvm_segment cs, ds, es, fs, gs, ss
        kvm_segment tr, ldt
        kvm_dtable gdt, idt
        uint64_t cr0, cr2, cr3, cr4, cr8
        uint64_t efer
        uint64_t apic_base

    struct kvm_cpuid_entry2:
        uint32_t function
        uint32_t index
        uint32_t flags
        uint32_t eax, ebx, ecx, edx

    struct kvm_cpuid2:
        uint32_t nent
        kvm_cpuid_entry2 entries[0]

    struct kvm_irq_level:
        uint32_t irq
        uint32_t level

    struct kvm_irqfd:
        uint32_t fd
        uint32_t gsi
        uint32_t flags
        uint32_t resamplefd

    struct kvm_interrupt:
        uint32_t irq

    struct kvm_mp_state:
        uint32_t mp_state

    struct kvm_pit_config:
        uint32_t flags

    struct kvm_msi:
        uint32_t address_lo
        uint32_t address_hi
        uint32_t data
        uint32_t flags
        uint32_t devid

    ctypedef struct _kvm_irq_routing_msi:
        uint32_t address_lo
        uint32_t address_hi
        uint32_t data

    ctypedef struct _kvm_irq_routing_u:
        _kvm_irq_routing_msi msi

    struct kvm_irq_routing_entry:
        uint32_t gsi
        uint32_t type
        uint32_t flags
        _kvm_irq_routing_u u

    struct kvm_irq_routing:
        uint32_t nr
        uint32_t flags
        kvm_irq_routing_entry entries[0]

    # Member types of the anonymous union in struct kvm_run; only their
    # members are ever named, so the C type names below are never emitted.
    ctypedef struct _kvm_run_io:
        uint8_t direction
        uint8_t size
        uint16_t port
        uint32_t count
        uint64_t data_offset

    ctypedef struct _kvm_run_mmio:
        uint64_t phys_addr
        uint8_t data[8]
        uint32_t len
        uint8_t is_write

    ctypedef struct _kvm_run_hw:
        uint64_t hardware_exit_reason

    ctypedef struct _kvm_run_fail_entry:
        uint64_t hardware_entry_failure_reason
        uint32_t cpu

    ctypedef struct _kvm_run_internal:
        uint32_t suberror
        uint32_t ndata
        uint64_t data[16]

    ctypedef struct _kvm_run_system_event:
        uint32_t type
        uint32_t ndata

    struct kvm_sync_regs:
        kvm_regs regs
        kvm_sregs sregs

    ctypedef struct _kvm_run_s:
        kvm_sync_regs regs

    struct kvm_run:
        uint8_t request_interrupt_window
        uint8_t immediate_exit
        uint32_t exit_reason
        uint8_t ready_for_interrupt_injection
        uint8_t if_flag
        uint16_t flags
        uint64_t cr8
        uint64_t apic_base
        _kvm_run_hw hw
        _kvm_run_fail_entry fail_entry
        _kvm_run_io io
        _kvm_run_mmio mmio
        _kvm_run_internal internal
        _kvm_run_system_event system_event
        uint64_t kvm_valid_regs
        uint64_t kvm_dirty_regs
        _kvm_run_s s
