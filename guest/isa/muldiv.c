/* isa/muldiv: the M extension. mul/mulh/mulhsu/mulhu with every sign mix,
 * div/divu/rem/remu including division by zero (quotient all ones, remainder
 * the dividend) and the overflow case INT_MIN / -1 (quotient INT_MIN,
 * remainder 0). */
#include "isa.h"

static const uint32_t operand[] = {
    0x00000000, 0x00000001, 0x00000007, 0xfffffff9 /* -7 */,
    0xffffffff /* -1 */, 0x7fffffff, 0x80000000 /* INT_MIN */, 0x12345678,
    0xedcba988,
};

/* The M extension's instructions (an X-macro list, in the order they print),
 * each over every pair of operands. */
#define M_OPS(X) X(mul) X(mulh) X(mulhsu) X(mulhu) X(div) X(divu) X(rem) X(remu)
#define OPERAND_X_OPERAND(op) TEST_RR(op, operand, operand);

int main(void)
{
    M_OPS(OPERAND_X_OPERAND)
    return 0;
}
