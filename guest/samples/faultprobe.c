/* faultprobe: what a guest program sees of a fault injected under it
 * (`hwemu fault disk`, `hwemu fault clock`; docs/faults.md).
 *
 *     faultprobe disk <block device> <rounds>
 *         per round i: pwrite64 of 512 bytes at byte 512*i, fsync, pread64 of
 *         them back; prints "disk <i> write=<r> fsync=<r> read=<r> same=<0|1>"
 *         with each raw result (-errno on failure: -5 is EIO).
 *     faultprobe clock <rounds>
 *         per round: sleep 50 ms, then print "realtime <seconds>" of
 *         CLOCK_REALTIME (the timer device's wall clock, skewed by a fault).
 *
 * Ends with "faultprobe done". Needs a disk, so it is not one of the
 * differential tests' stdout samples: tests/integration/test_faults.py runs it. */
#include <stdio.h>
#include <string.h>
#include <stdlib.h>

static char buf[512];
static char back[512];

static int disk(const char *dev, int rounds)
{
    long fd = sys_openat(AT_FDCWD, dev, O_RDWR, 0);
    if (fd < 0) {
        printf("open %s = %ld\n", dev, fd);
        return 1;
    }
    for (int i = 0; i < rounds; i++) {
        for (int j = 0; j < 512; j++)
            buf[j] = (char)(i * 31 + j);
        long w = sys_pwrite64((int)fd, buf, 512, (int64_t)i * 512);
        long f = sys_fsync((int)fd);
        memset(back, 0, sizeof back);
        long r = sys_pread64((int)fd, back, 512, (int64_t)i * 512);
        printf("disk %d write=%ld fsync=%ld read=%ld same=%d\n", i, w, f, r, memcmp(buf, back, 512) == 0);
    }
    sys_close((int)fd);
    return 0;
}

static int clock(int rounds)
{
    struct hwemu_timespec64 nap = {0, 50 * 1000 * 1000}, now;
    for (int i = 0; i < rounds; i++) {
        sys_nanosleep(&nap);
        long rc = sys_clock_gettime(HWEMU_CLOCK_REALTIME, &now);
        printf("realtime %ld rc=%ld\n", (long)now.tv_sec, rc);
    }
    return 0;
}

int main(int argc, char **argv)
{
    int rc = 2;
    if (argc == 4 && strcmp(argv[1], "disk") == 0)
        rc = disk(argv[2], atoi(argv[3]));
    else if (argc == 3 && strcmp(argv[1], "clock") == 0)
        rc = clock(atoi(argv[2]));
    else
        printf("usage: faultprobe disk <dev> <rounds> | faultprobe clock <rounds>\n");
    printf("faultprobe done\n");
    return rc;
}
