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

int main(void)
{
    TEST_RR(mul, operand, operand);
    TEST_RR(mulh, operand, operand);
    TEST_RR(mulhsu, operand, operand);
    TEST_RR(mulhu, operand, operand);
    TEST_RR(div, operand, operand);
    TEST_RR(divu, operand, operand);
    TEST_RR(rem, operand, operand);
    TEST_RR(remu, operand, operand);
    return 0;
}
