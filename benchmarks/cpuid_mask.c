/* A CPU class for a whole process, for benchmarks: an LD_PRELOAD library that hides CPU features from the CPUID
   instruction (Linux x86-64 CPUID faulting, the `cpuid_fault` flag of /proc/cpuinfo): every CPUID executed after
   the library loads traps, runs for real and has the class's missing feature bits cleared, so libraries that
   choose their kernels at run time (LiteRT's XNNPACK, numpy, soxr, oneDNN) see that class.
   CPUID_MASK=avx2: no AVX-512, AVX-VNNI, AVX512_BF16, AMX; CPUID_MASK=avx512: Skylake-SP's AVX-512 only (F, CD,
   BW, DQ, VL). Unset: nothing changes. Built by benchmarks/birdnet_variants.py --hide-cpuid (gcc -O2 -shared
   -fPIC). Glibc picks its string functions before the library loads: those keep this CPU's instructions. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <asm/prctl.h>

static int mode;  /* 1 avx2, 2 avx512 */

static void real_cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4]) {
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
}

static void mask(uint32_t leaf, uint32_t sub, uint32_t r[4]) {
    if (leaf == 7 && sub == 0) {
        uint32_t ebx_sky = (1u << 16) | (1u << 17) | (1u << 28) | (1u << 30) | (1u << 31);  /* F DQ CD BW VL */
        uint32_t ebx_all = ebx_sky | (1u << 21) | (1u << 26) | (1u << 27);                /* IFMA PF ER */
        uint32_t ecx_512 = (1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14);  /* VBMI VBMI2 VNNI BITALG VPOPCNTDQ */
        uint32_t edx_512 = (1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) | (1u << 25);
        r[1] &= ~(mode == 1 ? ebx_all : (ebx_all & ~ebx_sky));
        r[2] &= ~ecx_512;
        r[3] &= ~edx_512;
    } else if (leaf == 7 && sub == 1) {
        r[0] &= ~((1u << 4) | (1u << 5));  /* AVX-VNNI, AVX512_BF16 */
    }
}

static void on_segv(int sig, siginfo_t *info, void *context) {
    ucontext_t *uc = context;
    greg_t *g = uc->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)g[REG_RIP];
    if (ip[0] != 0x0f || ip[1] != 0xa2) {  /* a real fault: default action */
        signal(SIGSEGV, SIG_DFL);
        return;
    }
    uint32_t r[4], leaf = (uint32_t)g[REG_RAX], sub = (uint32_t)g[REG_RCX];
    syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1);
    real_cpuid(leaf, sub, r);
    syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
    mask(leaf, sub, r);
    g[REG_RAX] = r[0]; g[REG_RBX] = r[1]; g[REG_RCX] = r[2]; g[REG_RDX] = r[3];
    g[REG_RIP] += 2;
}

__attribute__((constructor)) static void init(void) {
    const char *m = getenv("CPUID_MASK");
    if (!m) return;
    mode = strcmp(m, "avx2") == 0 ? 1 : strcmp(m, "avx512") == 0 ? 2 : 0;
    if (!mode) return;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGSEGV, &sa, NULL);
    syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
}
