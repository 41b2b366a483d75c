/* The physical limit: the smallest program that runs a kvmscope guest on one
 * vCPU, looping on KVM_RUN with nothing but the exit decode.  Used by
 * bench/pio_exits.py as the baseline for kvmscope's exits/s.
 *
 *   kvm_min GUEST.bin ITERATIONS   ->  prints "exits <n> ns <elapsed>"
 *
 * Same board as kvmscope: flat 32-bit protected mode, code at 0x10000,
 * parameters at 0x1000, the guest ends by writing port 0x501. */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MEM_SIZE (16u << 20)

static void die(const char *what) { fprintf(stderr, "kvm_min: %s: %s\n", what, strerror(errno)); exit(2); }

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: kvm_min GUEST.bin ITERATIONS\n"); return 2; }
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) die("open /dev/kvm");
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0) die("KVM_CREATE_VM");
    if (ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000) < 0) die("KVM_SET_TSS_ADDR");
    uint8_t *mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mem == MAP_FAILED) die("mmap");
    struct kvm_userspace_memory_region region = {.slot = 0, .guest_phys_addr = 0,
        .memory_size = MEM_SIZE, .userspace_addr = (uint64_t)mem};
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) die("KVM_SET_USER_MEMORY_REGION");

    FILE *f = fopen(argv[1], "rb");
    if (!f) die(argv[1]);
    size_t n = fread(mem + 0x10000, 1, 0x30000, f);
    fclose(f);
    if (n == 0) die("empty guest");
    uint32_t params[2] = {0x534D564B, 1};
    uint64_t iters = strtoull(argv[2], NULL, 0);
    memcpy(mem + 0x1000, params, 8);
    memcpy(mem + 0x1008, &iters, 8);

    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0) die("KVM_CREATE_VCPU");
    int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    struct kvm_run *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED) die("mmap kvm_run");
    struct kvm_sregs sregs;
    if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0) die("KVM_GET_SREGS");
    struct kvm_segment seg = {.base = 0, .limit = 0xffffffff, .selector = 0x08, .type = 11,
        .present = 1, .dpl = 0, .db = 1, .s = 1, .l = 0, .g = 1};
    sregs.cs = seg;
    seg.selector = 0x10; seg.type = 3;
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = seg;
    sregs.cr0 |= 1;
    if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0) die("KVM_SET_SREGS");
    struct kvm_regs regs = {.rflags = 2, .rip = 0x10000, .rsp = 0x80000, .rax = 0, .rbx = 0x1000};
    if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) die("KVM_SET_REGS");

    uint64_t exits = 0;
    int64_t t0 = now_ns();
    for (;;) {
        if (ioctl(vcpu, KVM_RUN, 0) < 0) {
            if (errno == EINTR) continue;
            die("KVM_RUN");
        }
        exits++;
        if (run->exit_reason != KVM_EXIT_IO) {
            fprintf(stderr, "kvm_min: unexpected exit %u\n", run->exit_reason);
            return 1;
        }
        if (run->io.port == 0x501) break;
    }
    int64_t t1 = now_ns();
    printf("exits %llu ns %lld\n", (unsigned long long)exits, (long long)(t1 - t0));
    return 0;
}
