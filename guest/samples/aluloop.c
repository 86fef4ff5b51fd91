/* aluloop: runs a hand-written assembly ALU loop (aluloop.S) whose exact
 * dynamic instruction count is known, and prints that count with the result.
 * Proves add/sub/xor/or/andi/slli/srli/sra (register shift amounts >= 32
 * use the low 5 bits) and a tight backward bnez, at about 5 million
 * instructions: the yardstick for the interpreter's MIPS. */
#include <stdio.h>
#include <stdlib.h>

#define ALULOOP_SETUP 4
#define ALULOOP_BODY  12
#define ALULOOP_EXIT  3

uint32_t aluloop(uint32_t n, uint32_t seed);

int main(int argc, char **argv)
{
    uint32_t n = argc > 1 ? (uint32_t)atoi(argv[1]) : 400000;
    if (n == 0)
        n = 1;
    uint32_t r = aluloop(n, 0x12345678);
    printf("aluloop: %u iterations x %u + %u = %u instructions in aluloop()\n",
           (unsigned)n, ALULOOP_BODY, ALULOOP_SETUP + ALULOOP_EXIT,
           (unsigned)(ALULOOP_SETUP + ALULOOP_BODY * n + ALULOOP_EXIT));
    printf("aluloop: result 0x%08x\n", (unsigned)r);
    return 0;
}
