/* naps: sleeps NAPS times (default 8) for MS milliseconds (default 250) with
 * clock_nanosleep, printing one line after each nap. Its output does not
 * depend on how long a nap really took, only on every nap ending: the
 * recovery test (tests/integration/test_recovery.py) kills the timer node
 * while it sleeps, and the OS's timer driver must re-program the restarted
 * timer, or the sleeper never wakes. Usage: naps [NAPS [MS]]. */
#include <stdio.h>
#include <stdlib.h>
#include <hwemu.h>

int main(int argc, char **argv)
{
    int naps = argc > 1 ? atoi(argv[1]) : 8;
    int ms = argc > 2 ? atoi(argv[2]) : 250;
    struct hwemu_timespec64 t = {ms / 1000, (int64_t)(ms % 1000) * 1000000};
    for (int i = 1; i <= naps; i++) {
        if (sys_nanosleep(&t) != 0) {
            printf("nap %d: nanosleep failed\n", i);
            return 1;
        }
        printf("nap %d of %d done\n", i, naps);
    }
    printf("naps: all %d done\n", naps);
    return 0;
}
