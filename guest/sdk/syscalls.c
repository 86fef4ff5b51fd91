/* hwemu guest SDK: system call wrappers, one ecall each (see hwemu_sys.h). */
#include <hwemu.h>

#define SC6 hwemu_syscall6
#define SC3 hwemu_syscall3
/* On RV32 a 64-bit syscall argument goes in an aligned register pair, low
 * half first; pread64/pwrite64 have (fd, buf, n, off) so off lands in a3/a4. */
#define LO(x) ((long)(uint32_t)(x))
#define HI(x) ((long)(uint32_t)((uint64_t)(x) >> 32))

long sys_read(int fd, void *buf, size_t n) { return SC3(SYS_read, fd, buf, n); }
long sys_write(int fd, const void *buf, size_t n) { return SC3(SYS_write, fd, buf, n); }
long sys_openat(int dirfd, const char *path, int flags, int mode)
{
    return SC6(SYS_openat, dirfd, (long)path, flags, mode, 0, 0);
}
long sys_close(int fd) { return SC3(SYS_close, fd, 0, 0); }
long sys_pread64(int fd, void *buf, size_t n, int64_t off)
{
    return SC6(SYS_pread64, fd, (long)buf, (long)n, LO(off), HI(off), 0);
}
long sys_pwrite64(int fd, const void *buf, size_t n, int64_t off)
{
    return SC6(SYS_pwrite64, fd, (long)buf, (long)n, LO(off), HI(off), 0);
}
long sys_fsync(int fd) { return SC3(SYS_fsync, fd, 0, 0); }
long sys_socket(int domain, int type, int protocol)
{
    return SC3(SYS_socket, domain, type, protocol);
}
long sys_bind(int fd, const void *addr, unsigned addrlen)
{
    return SC3(SYS_bind, fd, addr, addrlen);
}
long sys_sendto(int fd, const void *buf, size_t n, int flags,
                const void *addr, unsigned addrlen)
{
    return SC6(SYS_sendto, fd, (long)buf, (long)n, flags, (long)addr, (long)addrlen);
}
long sys_recvfrom(int fd, void *buf, size_t n, int flags,
                  void *addr, unsigned *addrlen)
{
    return SC6(SYS_recvfrom, fd, (long)buf, (long)n, flags, (long)addr, (long)addrlen);
}
long sys_brk(void *addr) { return SC3(SYS_brk, addr, 0, 0); }
long sys_clock_gettime(int clock, struct hwemu_timespec64 *ts)
{
    return SC3(SYS_clock_gettime64, clock, ts, 0);
}
long sys_nanosleep(const struct hwemu_timespec64 *req)
{
    /* clock_nanosleep(CLOCK_MONOTONIC, flags=0 (relative), req, rem=NULL) */
    return SC6(SYS_clock_nanosleep_time64, HWEMU_CLOCK_MONOTONIC, 0, (long)req, 0, 0, 0);
}
long sys_getpid(void) { return SC3(SYS_getpid, 0, 0, 0); }
void sys_exit(int code)
{
    SC3(SYS_exit, code, 0, 0);
    for (;;) {}
}
void sys_exit_group(int code)
{
    SC3(SYS_exit_group, code, 0, 0);
    for (;;) {}
}
void exit(int code) { sys_exit_group(code); }
void abort(void) { sys_exit_group(134); }
