/* isa/alu: every RV32I register-register and register-immediate ALU
 * instruction over edge-case operands, shifts by 0, 31 and register amounts
 * >= 32, slt/sltu/slti/sltiu at the signed and unsigned extremes, lui, auipc,
 * and writes to x0 being dropped. */
#include "isa.h"

#define TEST_RI_ALL(op)                                                      \
    do {                                                                     \
        TEST_RI(op, edge, 0);                                                \
        TEST_RI(op, edge, 1);                                                \
        TEST_RI(op, edge, -1);                                               \
        TEST_RI(op, edge, 2047);                                             \
        TEST_RI(op, edge, -2048);                                            \
    } while (0)

#define TEST_SHIFT_IMM(op)                                                   \
    do {                                                                     \
        TEST_RI(op, edge, 0);                                                \
        TEST_RI(op, edge, 1);                                                \
        TEST_RI(op, edge, 15);                                               \
        TEST_RI(op, edge, 31);                                               \
    } while (0)

#define TEST_LUI(imm)                                                        \
    do {                                                                     \
        uint32_t r_;                                                         \
        __asm__ volatile("lui %0, %1" : "=r"(r_) : "i"(imm));                \
        printf("lui 0x%05x = 0x%08x\n", (unsigned)(imm), (unsigned)r_);      \
    } while (0)

/* auipc adds imm << 12 to its own address: print result - own address. */
#define TEST_AUIPC(imm)                                                      \
    do {                                                                     \
        uint32_t r_, pc_;                                                    \
        __asm__ volatile("1: auipc %0, %2\n\tlla %1, 1b"                     \
                         : "=r"(r_), "=r"(pc_) : "i"(imm));                  \
        printf("auipc 0x%05x: result - pc = 0x%08x\n", (unsigned)(imm),      \
               (unsigned)(r_ - pc_));                                        \
    } while (0)

int main(void)
{
    TEST_RR(add, edge, edge);
    TEST_RR(sub, edge, edge);
    TEST_RR(xor, edge, edge);
    TEST_RR(or, edge, edge);
    TEST_RR(and, edge, edge);
    TEST_RR(slt, edge, edge);
    TEST_RR(sltu, edge, edge);
    TEST_RR(sll, edge, shamt);
    TEST_RR(srl, edge, shamt);
    TEST_RR(sra, edge, shamt);

    TEST_RI_ALL(addi);
    TEST_RI_ALL(xori);
    TEST_RI_ALL(ori);
    TEST_RI_ALL(andi);
    TEST_RI_ALL(slti);
    TEST_RI_ALL(sltiu);
    TEST_SHIFT_IMM(slli);
    TEST_SHIFT_IMM(srli);
    TEST_SHIFT_IMM(srai);

    TEST_LUI(0);
    TEST_LUI(1);
    TEST_LUI(0x7ffff);
    TEST_LUI(0x80000);
    TEST_LUI(0xfffff);
    TEST_AUIPC(0);
    TEST_AUIPC(1);
    TEST_AUIPC(0x7ffff);
    TEST_AUIPC(0x80000);
    TEST_AUIPC(0xfffff);

    uint32_t zero;
    __asm__ volatile("addi x0, x0, 5\n\tlui x0, 0x12345\n\tadd x0, %1, %1\n\tmv %0, x0"
                     : "=r"(zero) : "r"(7));
    printf("x0 after writes = 0x%08x\n", (unsigned)zero);
    return 0;
}
