/* isa/system: fence, fence.i after rewriting code (self-modifying code in
 * the RWX segment of link.ld), and the counters rdcycle/rdtime/rdinstret with
 * their high halves. Counter values differ between CPUs, so only their
 * monotonicity is printed. ecall is exercised by every printf; ebreak ends
 * the program (SIGTRAP, like qemu-riscv32: system.fault names it).
 *
 * The rewritten function is called SMC_CALLS times after each rewrite, more
 * than the translator's HOT_THRESHOLD (32, nodes/cpu/core.py): the first
 * calls run in the interpreter, the later ones as translated code, so both
 * paths are held against qemu, and fence.i must drop the translation. */
#include "isa.h"

/* The SDK compiles for plain rv32im (gcc 12 then never emits a CSR access);
 * these few instructions enable Zicsr/Zifencei for the assembler locally. */
#define WITH_EXT(insn) ".option push\n\t.option arch, +zicsr, +zifencei\n\t" \
                       insn "\n\t.option pop"

/* smc_get() returns 1 until main() rewrites its first instruction. */
__asm__(".pushsection .rwx.smc, \"awx\", @progbits\n"
        ".globl smc_get\n"
        ".type smc_get, @function\n"
        ".p2align 2\n"
        "smc_get:\n\t"
        "li a0, 1\n\t"
        "ret\n"
        ".size smc_get, . - smc_get\n"
        ".popsection");
uint32_t smc_get(void);

static void patch(uint32_t insn)
{
    volatile uint32_t *code = (volatile uint32_t *)(uintptr_t)smc_get;
    *code = insn;
    __asm__ volatile(WITH_EXT("fence.i") ::: "memory");
}

#define SMC_CALLS 100

static void show_smc(const char *what)
{
    uint32_t first = smc_get(), sum = 0;
    int same = 1;
    for (int i = 0; i < SMC_CALLS; i++) {
        uint32_t v = smc_get();
        sum += v;
        same &= v == first;
    }
    printf("%ssmc_get() = 0x%08x, %d more calls: sum 0x%08x, all the same: %s\n", what, (unsigned)first,
           SMC_CALLS, (unsigned)sum, same ? "yes" : "no");
}

static void test_fence_i(void)
{
    show_smc("");
    patch(0x00200513);              /* addi a0, x0, 2 */
    show_smc("after addi a0, x0, 2: ");
    patch(0xabcde537);              /* lui a0, 0xabcde */
    show_smc("after lui a0, 0xabcde: ");
    patch(0xfff00513);              /* addi a0, x0, -1 */
    show_smc("after addi a0, x0, -1: ");
}

/* A 64-bit counter read on RV32: hi, lo, hi again until hi is stable. */
#define READ_COUNTER64(lo_insn, hi_insn)                                     \
    ({                                                                       \
        uint32_t hi_, lo_, hi2_;                                             \
        do {                                                                 \
            __asm__ volatile(WITH_EXT(hi_insn " %0") : "=r"(hi_));           \
            __asm__ volatile(WITH_EXT(lo_insn " %0") : "=r"(lo_));           \
            __asm__ volatile(WITH_EXT(hi_insn " %0") : "=r"(hi2_));          \
        } while (hi_ != hi2_);                                               \
        ((uint64_t)hi_ << 32) | lo_;                                         \
    })

static uint32_t busy(uint32_t x)
{
    for (int i = 0; i < 1000; i++)
        x = x * 3 + 1;
    return x;
}

#define TEST_COUNTER(name, lo_insn, hi_insn)                                 \
    do {                                                                     \
        int ok_ = 1;                                                         \
        uint64_t prev_ = READ_COUNTER64(lo_insn, hi_insn);                   \
        for (int k_ = 0; k_ < 5; k_++) {                                     \
            sink = busy(sink);                                               \
            uint64_t now_ = READ_COUNTER64(lo_insn, hi_insn);                \
            ok_ &= now_ >= prev_;                                            \
            prev_ = now_;                                                    \
        }                                                                    \
        show_check(name " non-decreasing", ok_);                             \
    } while (0)

static volatile uint32_t sink = 1;

int main(void)
{
    __asm__ volatile("fence" ::: "memory");
    __asm__ volatile("fence rw, rw" ::: "memory");
    __asm__ volatile("fence iorw, iorw" ::: "memory");
    __asm__ volatile("fence w, r" ::: "memory");
    printf("fence: ok\n");

    test_fence_i();

    TEST_COUNTER("rdcycle/rdcycleh", "rdcycle", "rdcycleh");
    TEST_COUNTER("rdtime/rdtimeh", "rdtime", "rdtimeh");
    TEST_COUNTER("rdinstret/rdinstreth", "rdinstret", "rdinstreth");
    printf("ebreak next\n");
    __asm__ volatile(".globl system_ebreak\nsystem_ebreak:\n\tebreak" ::: "memory");
    printf("not reached: ebreak returned\n");
    return 0;
}
