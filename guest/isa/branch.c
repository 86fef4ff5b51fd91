/* isa/branch: all six conditional branches, taken and not taken, over every
 * pair of signed/unsigned edge values (forward and backward targets), and
 * jal/jalr: link = pc + 4, jalr clears bit 0 of the target, jalr offsets,
 * jalr with rd == rs1 (target read before the link is written), rd = x0. */
#include "isa.h"

/* Forward branch: r = 1 if taken. */
#define TEST_BRANCH(op)                                                      \
    for (size_t i_ = 0; i_ < COUNT(edge); i_++)                              \
        for (size_t j_ = 0; j_ < COUNT(edge); j_++) {                        \
            uint32_t a_ = edge[i_], b_ = edge[j_], r_;                       \
            __asm__ volatile(#op " %1, %2, 1f\n\t"                           \
                             "li %0, 0\n\t"                                  \
                             "j 2f\n"                                        \
                             "1: li %0, 1\n"                                 \
                             "2:"                                            \
                             : "=&r"(r_) : "r"(a_), "r"(b_));                \
            printf(#op " 0x%08x, 0x%08x: %s\n", (unsigned)a_, (unsigned)b_,  \
                   r_ ? "taken" : "not taken");                              \
        }

/* Backward branch: the branch sits after its target; r = 1 if taken. */
#define TEST_BRANCH_BACK(op, a, b)                                           \
    do {                                                                     \
        uint32_t r_;                                                         \
        __asm__ volatile("j 2f\n"                                            \
                         "1: li %0, 1\n\t"                                   \
                         "j 3f\n"                                            \
                         "2: " #op " %1, %2, 1b\n\t"                         \
                         "li %0, 0\n"                                        \
                         "3:"                                                \
                         : "=&r"(r_) : "r"(a), "r"(b));                      \
        printf(#op " backward 0x%08x, 0x%08x: %s\n", (unsigned)(a),         \
               (unsigned)(b), r_ ? "taken" : "not taken");                   \
    } while (0)

static void test_jal(void)
{
    uint32_t link, expect, skipped = 7;
    __asm__ volatile("lla %1, 2f\n\t"
                     "jal %0, 1f\n"
                     "2: li %2, 99\n"
                     "1:"
                     : "=&r"(link), "=&r"(expect), "+r"(skipped));
    show_check("jal link = pc + 4", link == expect);
    show_check("jal skips to target", skipped == 7);

    uint32_t back = 0;
    __asm__ volatile("j 2f\n"
                     "1: addi %0, %0, 1\n\t"
                     "j 3f\n"
                     "2: jal x0, 1b\n"
                     "3:"
                     : "+r"(back));
    show_check("jal x0 backward", back == 1);
}

/* Runs `setup` then the jump `jump`, which must land on label 1 with the
 * link register %0 = the address of label 2, the instruction after it.
 * %2 is a scratch register for the target. */
#define TEST_JALR(what, setup, jump)                                         \
    do {                                                                     \
        uint32_t link_, expect_ = 0, target_;                                \
        __asm__ volatile(setup "\n\t" jump "\n"                              \
                         "2: j 3f\n"                                         \
                         "1: lla %1, 2b\n"                                   \
                         "3:"                                                \
                         : "=&r"(link_), "+&r"(expect_), "=&r"(target_));    \
        show_check(what, link_ == expect_);                                  \
    } while (0)

static void test_jalr(void)
{
    /* Odd target: bit 0 is cleared, so this lands exactly on label 1. */
    TEST_JALR("jalr clears bit 0 and links pc + 4", "lla %2, 1f + 1", "jalr %0, 0(%2)");
    /* Positive and negative offsets added to rs1. */
    TEST_JALR("jalr offset +12", "lla %2, 1f - 12", "jalr %0, 12(%2)");
    TEST_JALR("jalr offset -2047 (odd sum)", "lla %2, 1f + 2047", "jalr %0, -2047(%2)");
    /* rd == rs1: the target comes from the old value. */
    TEST_JALR("jalr rd == rs1", "lla %0, 1f", "jalr %0, 0(%0)");

    /* rd = x0: a plain indirect jump, x0 stays 0. */
    uint32_t zero, target;
    __asm__ volatile("lla %1, 1f\n\t"
                     "jalr x0, 0(%1)\n\t"
                     "li %1, 99\n"
                     "1: mv %0, x0"
                     : "=r"(zero), "=&r"(target));
    show_check("jalr x0 jumps and x0 stays 0", zero == 0 && target != 99);
}

int main(void)
{
    TEST_BRANCH(beq);
    TEST_BRANCH(bne);
    TEST_BRANCH(blt);
    TEST_BRANCH(bge);
    TEST_BRANCH(bltu);
    TEST_BRANCH(bgeu);
    TEST_BRANCH_BACK(beq, 5u, 5u);
    TEST_BRANCH_BACK(bne, 5u, 5u);
    TEST_BRANCH_BACK(blt, 0x80000000u, 0u);
    TEST_BRANCH_BACK(bge, 0x80000000u, 0u);
    TEST_BRANCH_BACK(bltu, 0x80000000u, 0u);
    TEST_BRANCH_BACK(bgeu, 0x80000000u, 0u);
    test_jal();
    test_jalr();
    return 0;
}
