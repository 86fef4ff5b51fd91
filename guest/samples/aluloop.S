/*
 * uint32_t aluloop(uint32_t n, uint32_t seed) — a straight-line ALU loop
 * whose dynamic instruction count is exact: 4 + 12 * n + 3 for n >= 1
 * (setup, loop body, exit including ret). aluloop.c prints that number so a
 * CPU's instruction counter and its MIPS can be checked against it.
 * Keep ALULOOP_SETUP / ALULOOP_BODY / ALULOOP_EXIT in aluloop.c in step.
 */
    .option norvc
    .text
    .globl aluloop
    .type aluloop, @function
aluloop:
    /* setup: 4 instructions (li of a 32-bit constant is lui + addi) */
    mv      t0, a1
    li      t1, 0x5bd1e995
    li      a1, 0
    /* body: 12 instructions per iteration */
1:  add     t2, t1, a0          /* the counter keeps the state off 0 */
    xor     t0, t0, t2
    slli    t3, t0, 7
    srli    t4, t0, 25
    or      t0, t3, t4          /* rotate left by 7 */
    sub     t1, t1, t0
    sra     t5, t1, a0          /* shift by the counter: low 5 bits only */
    xor     t1, t1, t5
    andi    t6, t0, 0xff
    add     a1, a1, t6
    addi    a0, a0, -1
    bnez    a0, 1b
    /* exit: 3 instructions */
    xor     a0, t0, t1
    add     a0, a0, a1
    ret
    .size aluloop, . - aluloop
