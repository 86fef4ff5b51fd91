/*
 * hwemu guest start-up: the entry point of every SDK program.
 *
 * The loader (qemu-riscv32 linux-user, or hwemu's OS) enters here with the
 * Linux initial stack: sp -> argc, argv[0..argc-1], NULL, envp..., NULL, auxv.
 * We set gp for linker relaxation of small data, call main(argc, argv, envp)
 * and pass its return value to exit_group, as the C runtime of Linux does.
 */
#include "hwemu_sys.h"

    .section .text.start, "ax", @progbits
    .globl _start
    .type _start, @function
_start:
    .option push
    .option norelax         /* gp is not set yet: this la must not use it */
    la      gp, __global_pointer$
    .option pop
    lw      a0, 0(sp)       /* argc */
    addi    a1, sp, 4       /* argv */
    slli    a2, a0, 2
    add     a2, a2, a1
    addi    a2, a2, 4       /* envp = &argv[argc + 1] */
    andi    sp, sp, -16     /* the psABI wants a 16-byte aligned sp at calls */
    call    main
    li      a7, SYS_exit_group
    ecall
1:  j       1b              /* exit_group does not return */
    .size _start, . - _start
