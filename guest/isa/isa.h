/*
 * Shared helpers for the instruction-level test programs in guest/isa/.
 *
 * Every test runs one real instruction through inline asm (the compiler
 * cannot fold it) over a table of edge-case operands and prints operands and
 * result in hex, one line per case, so that any difference between
 * qemu-riscv32 and hwemu's CPU shows up as a differing line.
 */
#ifndef ISA_H
#define ISA_H

#include <stdio.h>

#define COUNT(arr) (sizeof(arr) / sizeof((arr)[0]))

/* Operands around every signed/unsigned boundary of a 32-bit word. */
static const uint32_t edge[] = {
    0x00000000, 0x00000001, 0x00000002, 0x7fffffff,
    0x80000000, 0x80000001, 0xfffffffe, 0xffffffff, 0x12345678,
};

/* Shift amounts: 0, 31, and register values >= 32 (only the low 5 bits
 * count: 32 -> 0, 33 -> 1, 63 -> 31, 0xffffffe1 -> 1). */
static const uint32_t shamt[] = {
    0, 1, 4, 31, 32, 33, 63, 0xffffffe1,
};

static inline void show_rr(const char *op, uint32_t a, uint32_t b, uint32_t r)
{
    printf("%s 0x%08x, 0x%08x = 0x%08x\n", op, (unsigned)a, (unsigned)b, (unsigned)r);
}

static inline void show_ri(const char *op, uint32_t a, int imm, uint32_t r)
{
    printf("%s 0x%08x, %d = 0x%08x\n", op, (unsigned)a, imm, (unsigned)r);
}

static inline void show_check(const char *what, int ok)
{
    printf("%s: %s\n", what, ok ? "yes" : "NO");
}

/* rd = op rs1, rs2 over every pair from tables A x B. */
#define TEST_RR(op, A, B)                                                    \
    for (size_t i_ = 0; i_ < COUNT(A); i_++)                                 \
        for (size_t j_ = 0; j_ < COUNT(B); j_++) {                           \
            uint32_t a_ = (A)[i_], b_ = (B)[j_], r_;                         \
            __asm__ volatile(#op " %0, %1, %2"                               \
                             : "=r"(r_) : "r"(a_), "r"(b_));                 \
            show_rr(#op, a_, b_, r_);                                        \
        }

/* rd = op rs1, imm over every operand from table A (imm is a constant). */
#define TEST_RI(op, A, imm)                                                  \
    for (size_t i_ = 0; i_ < COUNT(A); i_++) {                               \
        uint32_t a_ = (A)[i_], r_;                                           \
        __asm__ volatile(#op " %0, %1, %2"                                   \
                         : "=r"(r_) : "r"(a_), "i"(imm));                    \
        show_ri(#op, a_, (imm), r_);                                         \
    }

#endif
