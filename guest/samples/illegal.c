/* illegal: executes an illegal instruction (the all-zero word, defined as
 * illegal by the RISC-V spec). The program must die with a fault whose report
 * names the pc of that word (the symbol illegal_insn, listed in
 * illegal.fault); the output printed before must survive. */
#include <stdio.h>

int main(void)
{
    printf("executing the illegal instruction 0x00000000\n");
    __asm__ volatile(".globl illegal_insn\n"
                     "illegal_insn: .word 0x00000000" : : : "memory");
    printf("not reached: the illegal instruction did not fault\n");
    return 0;
}
