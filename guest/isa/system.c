/* isa/system: fence, fence.i after rewriting code (self-modifying code in
 * the RWX segment of link.ld), and the counters rdcycle/rdtime/rdinstret with
 * their high halves. Counter values differ between CPUs, so only their
 * monotonicity is printed. ecall is exercised by every printf; ebreak is not
 * tested here because it ends the program. */
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

static void test_fence_i(void)
{
    printf("smc_get() = 0x%08x\n", (unsigned)smc_get());
    patch(0x00200513);              /* addi a0, x0, 2 */
    printf("after addi a0, x0, 2: smc_get() = 0x%08x\n", (unsigned)smc_get());
    patch(0xabcde537);              /* lui a0, 0xabcde */
    printf("after lui a0, 0xabcde: smc_get() = 0x%08x\n", (unsigned)smc_get());
    patch(0xfff00513);              /* addi a0, x0, -1 */
    printf("after addi a0, x0, -1: smc_get() = 0x%08x\n", (unsigned)smc_get());
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
    return 0;
}
