/* hwemu guest SDK: the POSIX names over the raw wrappers of syscalls.c.
 * Each returns what POSIX says (-1 on failure, with errno set) instead of
 * the kernel's -errno. */
#include <hwemu.h>

int errno;

/* The kernel's result as POSIX returns it: -4095..-1 are -errno. */
static long posix(long r)
{
    if (r < 0 && r > -4096) {
        errno = (int)-r;
        return -1;
    }
    return r;
}

ssize_t read(int fd, void *buf, size_t n) { return posix(sys_read(fd, buf, n)); }
ssize_t write(int fd, const void *buf, size_t n) { return posix(sys_write(fd, buf, n)); }
int open(const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    int mode = (flags & O_CREAT) ? va_arg(ap, int) : 0;
    va_end(ap);
    return posix(sys_openat(AT_FDCWD, path, flags, mode));
}
int close(int fd) { return posix(sys_close(fd)); }
int fsync(int fd) { return posix(sys_fsync(fd)); }
ssize_t pread(int fd, void *buf, size_t n, int64_t off) { return posix(sys_pread64(fd, buf, n, off)); }
ssize_t pwrite(int fd, const void *buf, size_t n, int64_t off) { return posix(sys_pwrite64(fd, buf, n, off)); }
pid_t getpid(void) { return sys_getpid(); }
void _exit(int code) { sys_exit_group(code); }

/* brk(2) answers the break it set (the old one if it could not move it). */
int brk(void *addr)
{
    if (sys_brk(addr) != (long)addr) {
        errno = ENOMEM;
        return -1;
    }
    return 0;
}

void *sbrk(long increment)
{
    uintptr_t old = (uintptr_t)sys_brk(0);
    if (increment && brk((void *)(old + increment)) < 0)
        return (void *)-1;
    return (void *)old;
}

int clock_gettime(clockid_t clock, struct timespec *ts)
{
    struct hwemu_timespec64 k;
    long r = posix(sys_clock_gettime(clock, &k));
    if (r == 0) {
        ts->tv_sec = k.tv_sec;
        ts->tv_nsec = (long)k.tv_nsec;
    }
    return r;
}

int nanosleep(const struct timespec *req, struct timespec *rem)
{
    if (req->tv_nsec < 0 || req->tv_nsec >= 1000000000L || req->tv_sec < 0) {
        errno = EINVAL;
        return -1;
    }
    struct hwemu_timespec64 k = {req->tv_sec, req->tv_nsec};
    if (rem)
        rem->tv_sec = rem->tv_nsec = 0;  /* no signals interrupt a guest's sleep */
    return posix(sys_nanosleep(&k));
}

time_t time(time_t *t)
{
    struct timespec ts;
    time_t now = clock_gettime(CLOCK_REALTIME, &ts) == 0 ? ts.tv_sec : (time_t)-1;
    if (t)
        *t = now;
    return now;
}

int socket(int domain, int type, int protocol) { return posix(sys_socket(domain, type, protocol)); }
int bind(int fd, const struct sockaddr *addr, socklen_t addrlen) { return posix(sys_bind(fd, addr, addrlen)); }
ssize_t sendto(int fd, const void *buf, size_t n, int flags, const struct sockaddr *addr, socklen_t addrlen)
{
    return posix(sys_sendto(fd, buf, n, flags, addr, addrlen));
}
ssize_t recvfrom(int fd, void *buf, size_t n, int flags, struct sockaddr *addr, socklen_t *addrlen)
{
    return posix(sys_recvfrom(fd, buf, n, flags, addr, addrlen));
}
