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

/* The instructions, each an X-macro list (X(mnemonic) per entry), in the
 * order they print. */
#define RR_OPS(X)        X(add) X(sub) X(xor) X(or) X(and) X(slt) X(sltu)
#define SHIFT_RR_OPS(X)  X(sll) X(srl) X(sra)
#define RI_OPS(X)        X(addi) X(xori) X(ori) X(andi) X(slti) X(sltiu)
#define SHIFT_IMM_OPS(X) X(slli) X(srli) X(srai)
/* lui's and auipc's 20-bit immediates: 0, 1 and both ends of each sign */
#define UPPER_IMMS(X)    X(0) X(1) X(0x7ffff) X(0x80000) X(0xfffff)

#define EDGE_X_EDGE(op)  TEST_RR(op, edge, edge);
#define EDGE_X_SHAMT(op) TEST_RR(op, edge, shamt);
#define RI_EACH(op)      TEST_RI_ALL(op);
#define SHIFT_EACH(op)   TEST_SHIFT_IMM(op);
#define LUI_EACH(imm)    TEST_LUI(imm);
#define AUIPC_EACH(imm)  TEST_AUIPC(imm);

int main(void)
{
    RR_OPS(EDGE_X_EDGE)
    SHIFT_RR_OPS(EDGE_X_SHAMT)
    RI_OPS(RI_EACH)
    SHIFT_IMM_OPS(SHIFT_EACH)

    UPPER_IMMS(LUI_EACH)
    UPPER_IMMS(AUIPC_EACH)

    uint32_t zero;
    __asm__ volatile("addi x0, x0, 5\n\tlui x0, 0x12345\n\tadd x0, %1, %1\n\tmv %0, x0"
                     : "=r"(zero) : "r"(7));
    printf("x0 after writes = 0x%08x\n", (unsigned)zero);
    return 0;
}
