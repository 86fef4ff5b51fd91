/* badptr: hands the kernel a wild pointer. write() must fail with -EFAULT
 * (-14) and the program must go on running: a bad guest pointer is the
 * guest's error, never the machine's (DESIGN.md §6). Exits 0 iff -14. */
#include <stdio.h>

/* Below the text segment at 0x10000: never mapped. */
#define WILD ((const void *)0x00000ff0)

int main(void)
{
    long r = sys_write(1, WILD, 16);
    printf("write(1, %p, 16) = %ld\n", WILD, r);
    printf("still running after the bad pointer\n");
    return r == -HWEMU_EFAULT ? 0 : 1;
}
