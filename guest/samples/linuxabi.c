/* linuxabi: every system call the OS node serves that makes sense without a
 * device, as the guest sees it: results and errno must be the same under
 * qemu-riscv32, `hwemu cpu run` and the OS node (docs/guest-abi.md), since
 * all three print this program's .expected output. The calls of the disk and
 * the NIC are checked on their device-independent answers: a missing path
 * (-ENOENT), a descriptor that is not open (-EBADF), an unsupported domain or
 * protocol; read, write and time calls also on bad pointers (-EFAULT) and
 * bad arguments (-EINVAL). Ends with exit (93), not exit_group: status 3. */
#include <stdio.h>

#define BAD_FD 99
#define BAD_PTR ((void *)0x10) /* page 0 is never mapped */
#define CLOCK_REALTIME 0
#define CLOCK_MONOTONIC 1
#define TIMER_ABSTIME 1
#define AF_INET 2
#define SOCK_DGRAM 2
#define IPPROTO_TCP 6
#define SYS_FDATASYNC 83 /* fdatasync: the SDK has no wrapper */

static long call6(long n, long a, long b, long c, long d, long e, long f)
{
    return hwemu_syscall6(n, a, b, c, d, e, f);
}

static void show(const char *what, long result)
{
    printf("%s = %ld\n", what, result);
}

static void check(const char *what, int ok)
{
    printf("%s: %s\n", what, ok ? "yes" : "NO");
}

static int64_t ns(const struct hwemu_timespec64 *ts)
{
    return ts->tv_sec * 1000000000LL + ts->tv_nsec;
}

int main(void)
{
    struct hwemu_timespec64 t0, t1, req;
    char buf[16] = "abcd";
    /* a sockaddr_in for 127.0.0.1:9 */
    unsigned char sa[16] = {AF_INET, 0, 0, 9, 127, 0, 0, 1};

    check("getpid() > 0", sys_getpid() > 0);

    /* clock_gettime64 (403) */
    show("clock_gettime64(MONOTONIC)", call6(SYS_clock_gettime64, CLOCK_MONOTONIC, (long)&t0, 0, 0, 0, 0));
    check("tv_nsec in [0, 1e9)", t0.tv_nsec >= 0 && t0.tv_nsec < 1000000000);
    call6(SYS_clock_gettime64, CLOCK_MONOTONIC, (long)&t1, 0, 0, 0, 0);
    check("monotonic never goes back", ns(&t1) >= ns(&t0));
    show("clock_gettime64(REALTIME)", call6(SYS_clock_gettime64, CLOCK_REALTIME, (long)&t1, 0, 0, 0, 0));
    check("realtime is after 2020", t1.tv_sec > 1577836800LL);
    show("clock_gettime64(clock 99)", call6(SYS_clock_gettime64, 99, (long)&t1, 0, 0, 0, 0));
    show("clock_gettime64(bad pointer)", call6(SYS_clock_gettime64, CLOCK_MONOTONIC, (long)BAD_PTR, 0, 0, 0, 0));

    /* clock_nanosleep_time64 (407) */
    call6(SYS_clock_gettime64, CLOCK_MONOTONIC, (long)&t0, 0, 0, 0, 0);
    req.tv_sec = 0;
    req.tv_nsec = 20000000;
    show("nanosleep(20 ms)", call6(SYS_clock_nanosleep_time64, CLOCK_MONOTONIC, 0, (long)&req, 0, 0, 0));
    call6(SYS_clock_gettime64, CLOCK_MONOTONIC, (long)&t1, 0, 0, 0, 0);
    check("slept at least 20 ms", ns(&t1) - ns(&t0) >= 20000000);
    req.tv_sec = 1;
    req.tv_nsec = 0;
    show("nanosleep(absolute, in the past)",
         call6(SYS_clock_nanosleep_time64, CLOCK_MONOTONIC, TIMER_ABSTIME, (long)&req, 0, 0, 0));
    req.tv_nsec = 1000000000;
    show("nanosleep(tv_nsec = 1e9)", call6(SYS_clock_nanosleep_time64, CLOCK_MONOTONIC, 0, (long)&req, 0, 0, 0));
    req.tv_sec = -1;
    req.tv_nsec = 0;
    show("nanosleep(tv_sec = -1)", call6(SYS_clock_nanosleep_time64, CLOCK_MONOTONIC, 0, (long)&req, 0, 0, 0));
    show("nanosleep(bad pointer)",
         call6(SYS_clock_nanosleep_time64, CLOCK_MONOTONIC, 0, (long)BAD_PTR, 0, 0, 0));

    /* read (63), write (64) on bad pointers */
    show("read(0, bad pointer)", sys_read(0, BAD_PTR, 4));
    show("write(1, bad pointer)", sys_write(1, BAD_PTR, 4));

    /* openat (56), close (57), pread64 (67), pwrite64 (68), fsync (82), fdatasync (83) */
    show("openat(missing path)", sys_openat(AT_FDCWD, "/no/such/hwemu/file", 0, 0));
    show("openat(bad pointer)", sys_openat(AT_FDCWD, BAD_PTR, 0, 0));
    show("close(99)", sys_close(BAD_FD));
    show("pread64(99)", sys_pread64(BAD_FD, buf, 4, 0));
    show("pwrite64(99)", sys_pwrite64(BAD_FD, buf, 4, 0));
    show("fsync(99)", sys_fsync(BAD_FD));
    show("fdatasync(99)", call6(SYS_FDATASYNC, BAD_FD, 0, 0, 0, 0, 0));

    /* socket (198), bind (200), sendto (206), recvfrom (207) */
    show("socket(domain 12345)", sys_socket(12345, SOCK_DGRAM, 0));
    show("socket(AF_INET, SOCK_DGRAM, TCP)", sys_socket(AF_INET, SOCK_DGRAM, IPPROTO_TCP));
    show("bind(99)", sys_bind(BAD_FD, sa, sizeof sa));
    show("sendto(99)", sys_sendto(BAD_FD, buf, 4, 0, sa, sizeof sa));
    show("recvfrom(99)", sys_recvfrom(BAD_FD, buf, 4, 0, 0, 0));

    printf("exit(3)\n");
    sys_exit(3);
}
