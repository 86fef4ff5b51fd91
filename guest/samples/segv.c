/* segv: stores to an unmapped address. The program must die with a fault
 * whose report names the pc of the store (the symbol segv_store, listed in
 * segv.fault); the output printed before the fault must survive. */
#include <stdio.h>

#define UNMAPPED 0x00000ff0u

int main(void)
{
    printf("storing to 0x%08x\n", UNMAPPED);
    __asm__ volatile(".globl segv_store\n"
                     "segv_store: sw %1, 0(%0)"
                     : : "r"(UNMAPPED), "r"(0x5a5a5a5a) : "memory");
    printf("not reached: the store did not fault\n");
    return 0;
}
