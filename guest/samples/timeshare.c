/* timeshare: prints LINES numbered lines (default 6) tagged with TAG
 * (default "T"), with about 250 thousand instructions of pure compute between
 * two lines and no sleeping, so that two instances scheduled round-robin on
 * one CPU interleave their lines. Usage: timeshare [TAG [LINES [SLOW]]].
 * Each line carries a checksum of the work, so the output is deterministic;
 * SLOW (default 1) follows each line but the last with SLOW - 1 times its
 * compute, without changing the checksum: an instance that must still run
 * when another starts, however fast the CPU, is made slow rather than its
 * output different. */
#include <stdio.h>
#include <stdlib.h>

static uint32_t work(uint32_t x)
{
    /* ~10 instructions per step */
    for (int i = 0; i < 25000; i++) {
        x = x * 1664525u + 1013904223u;
        x ^= x >> 11;
    }
    return x;
}

int main(int argc, char **argv)
{
    const char *tag = argc > 1 ? argv[1] : "T";
    int lines = argc > 2 ? atoi(argv[2]) : 6;
    int slow = argc > 3 ? atoi(argv[3]) : 1;
    uint32_t x = 1;
    for (int i = 1; i <= lines; i++) {
        x = work(x);
        printf("%s: line %d of %d, work 0x%08x\n", tag, i, lines, (unsigned)x);
        volatile uint32_t again = x;
        for (int k = 1; k < slow && i < lines; k++)
            again = work(again);
    }
    return 0;
}
