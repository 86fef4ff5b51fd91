/* iowrite: N synchronous 4 KiB writes to a block device (bench/io.py).
 *
 *     iowrite <device> <n>
 *
 * pwrite64 of one 4 KiB block at offset 4096 * i (block-aligned: no
 * read-modify-write), then fsync, n times; prints "iowrite <n> <us>" with
 * the elapsed CLOCK_MONOTONIC microseconds. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char block[4096];

static int64_t now_ns(void)
{
    struct hwemu_timespec64 ts;
    sys_clock_gettime(HWEMU_CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        printf("usage: iowrite <device> <n>\n");
        return 2;
    }
    long n = strtol(argv[2], 0, 10);
    long fd = sys_openat(AT_FDCWD, argv[1], O_RDWR, 0);
    if (fd < 0) {
        printf("iowrite: cannot open %s: %ld\n", argv[1], fd);
        return 1;
    }
    int64_t t0 = now_ns();
    for (long i = 0; i < n; i++) {
        memset(block, (int)i, sizeof block);
        long r = sys_pwrite64((int)fd, block, sizeof block, (int64_t)i * 4096);
        if (r != (long)sizeof block || sys_fsync((int)fd) < 0) {
            printf("iowrite: write %ld failed: %ld\n", i, r);
            return 1;
        }
    }
    int64_t t1 = now_ns();
    printf("iowrite %ld %ld\n", n, (long)((t1 - t0) / 1000));
    return 0;
}
