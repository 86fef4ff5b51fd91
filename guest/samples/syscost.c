/* syscost: times guest system calls from inside the guest, for bench/vmm.py.
 * Usage: syscost [N [ROUNDS]]. Each round makes N one-byte write() calls to
 * the console and reads CLOCK_MONOTONIC before and after, then prints
 *     syscost: round R: N writes in T us
 * so the figure leaves out what a whole run also costs (loading the ELF,
 * starting the CLI). No .expected file: the times differ from run to run. */
#include <stdio.h>
#include <stdlib.h>

static int64_t now_us(void)
{
    struct hwemu_timespec64 ts;
    if (sys_clock_gettime(HWEMU_CLOCK_MONOTONIC, &ts) != 0)
        exit(2);
    return ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atoi(argv[1]) : 200;
    long rounds = argc > 2 ? atoi(argv[2]) : 5;
    for (long r = 1; r <= rounds; r++) {
        int64_t t0 = now_us();
        for (long i = 0; i < n; i++)
            if (sys_write(1, ".", 1) != 1)
                return 1;
        long us = (long)(now_us() - t0);
        printf("\nsyscost: round %ld: %ld writes in %ld us\n", r, n, us);
    }
    return 0;
}
