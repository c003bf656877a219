/* LD_PRELOAD shim: this process sees an AVX2-only x86 (no AVX-512, no VNNI, no AMX) through CPUID.
 *
 * Linux's CPUID faulting (arch_prctl ARCH_SET_CPUID, CPU flag `cpuid_fault`) turns every CPUID
 * instruction into SIGSEGV; the handler runs the real CPUID, clears the feature bits below and
 * steps over the instruction. Runtimes that pick kernels by CPUID (XNNPACK and ONNX Runtime via
 * cpuinfo/MLAS, OpenCV) then run the code an AVX2-only CPU runs. The kernel resets faulting on
 * execve, so every new process loads the shim again. Built and checked by benchmarks/cpu_mask.py.
 */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

static int arch_prctl_(int code, unsigned long arg) { return (int)syscall(SYS_arch_prctl, code, arg); }

static void real_cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4]) {
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
}

#define BIT(n) (1u << (n))
/* leaf 7.0 EBX: avx512 f dq ifma pf er cd bw vl */
static const uint32_t L7_EBX = BIT(16) | BIT(17) | BIT(21) | BIT(26) | BIT(27) | BIT(28) | BIT(30) | BIT(31);
/* leaf 7.0 ECX: avx512 vbmi, vbmi2, vnni, bitalg, vpopcntdq */
static const uint32_t L7_ECX = BIT(1) | BIT(6) | BIT(11) | BIT(12) | BIT(14);
/* leaf 7.0 EDX: avx512 4vnniw 4fmaps vp2intersect, amx-bf16, avx512-fp16, amx-tile, amx-int8 */
static const uint32_t L7_EDX = BIT(2) | BIT(3) | BIT(8) | BIT(22) | BIT(23) | BIT(24) | BIT(25);
/* leaf 7.1 EAX: avx-vnni, avx512-bf16, amx-fp16, avx-ifma */
static const uint32_t L71_EAX = BIT(4) | BIT(5) | BIT(21) | BIT(23);
/* leaf 7.1 EDX: avx-vnni-int8, avx-ne-convert, amx-complex, avx-vnni-int16, avx10 */
static const uint32_t L71_EDX = BIT(4) | BIT(5) | BIT(8) | BIT(10) | BIT(19);

/* Called by benchmarks/cpu_mask.py through ctypes: executes CPUID, so it goes through the handler. */
void fer_cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4]) { real_cpuid(leaf, sub, r); }

static void on_segv(int sig, siginfo_t *info, void *vctx) {
    ucontext_t *uc = (ucontext_t *)vctx;
    greg_t *g = uc->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)g[REG_RIP];
    /* CPUID faulting is a general-protection fault (SI_KERNEL) at a CPUID instruction; anything else
     * (a real fault, a SIGSEGV sent with kill) kills the process as if no handler were here */
    if (info->si_code != SI_KERNEL || ip[0] != 0x0f || ip[1] != 0xa2) {
        signal(SIGSEGV, SIG_DFL);
        raise(SIGSEGV);
        return;
    }
    uint32_t leaf = (uint32_t)g[REG_RAX], sub = (uint32_t)g[REG_RCX], r[4];
    arch_prctl_(ARCH_SET_CPUID, 1);
    real_cpuid(leaf, sub, r);
    arch_prctl_(ARCH_SET_CPUID, 0);
    if (leaf == 7 && sub == 0) {
        r[1] &= ~L7_EBX; r[2] &= ~L7_ECX; r[3] &= ~L7_EDX;
    } else if (leaf == 7 && sub == 1) {
        r[0] &= ~L71_EAX; r[3] &= ~L71_EDX;
    } else if (leaf == 0x1d || leaf == 0x1e || leaf == 0x24) {  /* AMX tile and AVX10 leaves */
        r[0] = r[1] = r[2] = r[3] = 0;
    }
    g[REG_RAX] = r[0]; g[REG_RBX] = r[1]; g[REG_RCX] = r[2]; g[REG_RDX] = r[3];
    g[REG_RIP] += 2;
    (void)sig;
}

__attribute__((constructor)) static void fer_cpu_mask_init(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGSEGV, &sa, NULL) != 0 || arch_prctl_(ARCH_SET_CPUID, 0) != 0) {
        /* never a silently unmasked run: refuse to start */
        fprintf(stderr, "cpu_mask: this kernel or CPU cannot fault on CPUID (no cpuid_fault); refusing to run unmasked\n");
        _exit(2);
    }
}
