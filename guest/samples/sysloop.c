/* sysloop: a syscall round-trip workload for bench/native.py. Writes one byte
 * per write() call, N times (argv[1], default 2000), then a summary line. */
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    long n = argc > 1 ? atoi(argv[1]) : 2000;
    long ok = 0;
    for (long i = 0; i < n; i++)
        ok += sys_write(1, ".", 1) == 1;
    printf("\nsysloop: %ld of %ld one-byte writes returned 1\n", ok, n);
    return ok == n ? 0 : 1;
}
