/*
 * hwemu guest SDK: the small C library every guest program links against.
 *
 * Two layers: the raw system call wrappers (sys_*) return the kernel's
 * result, >= 0 on success, -errno on failure; the POSIX names (read, write,
 * clock_gettime, socket, ...) return -1 and set errno, as a C programmer
 * expects. The rest is a freestanding subset of the C library: strings, a
 * printf family that writes through write(2) (unbuffered), stdin read
 * through a buffer (getchar, fgets), malloc/free over brk, qsort, exit.
 * The standard headers (stdio.h, stdlib.h, string.h, unistd.h, time.h,
 * errno.h, fcntl.h, sys/socket.h, netinet/in.h, arpa/inet.h) include this one.
 */
#ifndef HWEMU_H
#define HWEMU_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include "hwemu_sys.h"

/* ---- system calls (Linux RV32 numbers, see hwemu_sys.h) ---- */
struct hwemu_timespec64 {       /* struct __kernel_timespec: 64-bit seconds */
    int64_t tv_sec;
    int64_t tv_nsec;
};
#define HWEMU_CLOCK_REALTIME   0
#define HWEMU_CLOCK_MONOTONIC  1
#define HWEMU_AT_FDCWD       (-100)

long sys_read(int fd, void *buf, size_t n);
long sys_write(int fd, const void *buf, size_t n);
long sys_openat(int dirfd, const char *path, int flags, int mode);
long sys_close(int fd);
long sys_pread64(int fd, void *buf, size_t n, int64_t off);
long sys_pwrite64(int fd, const void *buf, size_t n, int64_t off);
long sys_fsync(int fd);
long sys_socket(int domain, int type, int protocol);
long sys_bind(int fd, const void *addr, unsigned addrlen);
long sys_sendto(int fd, const void *buf, size_t n, int flags,
                const void *addr, unsigned addrlen);
long sys_recvfrom(int fd, void *buf, size_t n, int flags,
                  void *addr, unsigned *addrlen);
long sys_brk(void *addr);
long sys_clock_gettime(int clock, struct hwemu_timespec64 *ts);
long sys_nanosleep(const struct hwemu_timespec64 *req);
long sys_getpid(void);
__attribute__((noreturn)) void sys_exit(int code);
__attribute__((noreturn)) void sys_exit_group(int code);

/* ---- string.h ---- */
void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);
char *strcpy(char *dst, const char *src);
char *strncpy(char *dst, const char *src, size_t n);
char *strcat(char *dst, const char *src);
char *strchr(const char *s, int c);
char *strrchr(const char *s, int c);

/* ---- stdio.h (unbuffered: each call ends in one sys_write) ---- */
#define EOF (-1)
int printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int dprintf(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int vdprintf(int fd, const char *fmt, va_list ap);
int snprintf(char *buf, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);
int puts(const char *s);
int putchar(int c);

/* ---- stdlib.h ---- */
void *malloc(size_t n);
void *calloc(size_t count, size_t size);
void *realloc(void *p, size_t n);
void free(void *p);
void qsort(void *base, size_t count, size_t size,
           int (*cmp)(const void *, const void *));
int atoi(const char *s);
long strtol(const char *s, char **end, int base);
__attribute__((noreturn)) void exit(int code);
__attribute__((noreturn)) void abort(void);

/* ---- fcntl.h, sys/socket.h, netinet/in.h: what the network samples use ---- */
/* open flags (asm-generic values, as RV32 Linux uses them) */
#define O_RDONLY   0
#define O_WRONLY   1
#define O_RDWR     2
#define O_CREAT    0100
#define O_TRUNC    01000
#define AT_FDCWD   HWEMU_AT_FDCWD
#define HWEMU_ENOENT   2

/* IPv4 UDP only */
#define AF_INET          2
#define SOCK_DGRAM       2
#define INADDR_ANY       0x00000000u
#define INADDR_LOOPBACK  0x7f000001u
struct in_addr {
    uint32_t s_addr;            /* network byte order */
};
struct sockaddr_in {            /* 16 bytes, as the kernel expects */
    uint16_t sin_family;        /* AF_INET, host byte order */
    uint16_t sin_port;          /* network byte order */
    struct in_addr sin_addr;
    uint8_t sin_zero[8];
};
/* RV32 is little-endian: network order is the byte-swapped value. (Macros,
 * not inline functions, so that programs which do not use them compile to
 * exactly the same objects as before they existed.) */
#define htons(x)   __builtin_bswap16((uint16_t)(x))
#define ntohs(x)   __builtin_bswap16((uint16_t)(x))
#define htonl(x)   __builtin_bswap32((uint32_t)(x))
#define ntohl(x)   __builtin_bswap32((uint32_t)(x))

/* sdk/net.c: "1".."65535" -> the port, anything else -> -1 */
int parse_port(const char *s);
/* a SOCK_DGRAM socket bound to INADDR_ANY:port: the fd, or -errno */
long udp_bind_any(int port);
/* the same for a program called name, saying what went wrong in one line:
 * "<name>: bad port '<s>' (want 1..65535)", "<name>: cannot bind UDP port
 * <port>: <-errno>" */
int port_arg(const char *name, const char *s);
long udp_listen(const char *name, int port);
/* sdk/net.c: a request/reply server on UDP socket fd. Each datagram is
 * received into buf (cap bytes; a longer one is truncated, n = cap) and
 * answered to its sender with the first len bytes of buf, len being what
 * answer(buf, n, cap) returns: the reply is written in place (an echo
 * writes nothing); answer returns UDP_LAST(len) to end the loop after that
 * reply. Returns, once stopped, how many datagrams were answered before the
 * one that stopped it; a failing recvfrom or sendto prints "<name>:
 * recvfrom failed: <-errno>" (or sendto) and returns the -errno. An answer
 * that reads buf only when it must and keeps no variable of its own costs
 * no memory fetch beyond the loop's (udpecho: 12 messages an echo). */
typedef long udp_answer_fn(char *buf, size_t n, size_t cap);
#define UDP_LAST(len) (-(long)(len) - 1)
long udp_serve(int fd, char *buf, size_t cap, udp_answer_fn *answer, const char *name);

/* ---- POSIX names (sdk/posix.c): -1 and errno on failure ---- */
/* errno.h */
extern int errno;
#define EPERM     1
#define ENOENT    2
#define EINTR     4
#define EIO       5
#define EBADF     9
#define EAGAIN   11
#define ENOMEM   12
#define EFAULT   14
#define EINVAL   22
#define ENOSPC   28
#define ENOSYS   38
#define EADDRINUSE 98

/* sys/types.h */
typedef int ssize_t;
typedef int pid_t;
typedef long off_t;
typedef unsigned socklen_t;
typedef int clockid_t;
typedef int64_t time_t;

/* unistd.h, fcntl.h */
#define STDIN_FILENO  0
#define STDOUT_FILENO 1
#define STDERR_FILENO 2
ssize_t read(int fd, void *buf, size_t n);
ssize_t write(int fd, const void *buf, size_t n);
int open(const char *path, int flags, ...);
int close(int fd);
int fsync(int fd);
ssize_t pread(int fd, void *buf, size_t n, int64_t off);
ssize_t pwrite(int fd, const void *buf, size_t n, int64_t off);
pid_t getpid(void);
void *sbrk(long increment);
int brk(void *addr);
__attribute__((noreturn)) void _exit(int code);

/* time.h (64-bit time, as RV32 Linux has only the _time64 calls) */
#define CLOCK_REALTIME  HWEMU_CLOCK_REALTIME
#define CLOCK_MONOTONIC HWEMU_CLOCK_MONOTONIC
struct timespec {
    time_t tv_sec;
    long tv_nsec;
};
int clock_gettime(clockid_t clock, struct timespec *ts);
int nanosleep(const struct timespec *req, struct timespec *rem);
time_t time(time_t *t);

/* sys/socket.h (IPv4 UDP), netinet/in.h, arpa/inet.h: see AF_INET above */
struct sockaddr {
    uint16_t sa_family;
    char sa_data[14];
};
int socket(int domain, int type, int protocol);
int bind(int fd, const struct sockaddr *addr, socklen_t addrlen);
ssize_t sendto(int fd, const void *buf, size_t n, int flags,
               const struct sockaddr *addr, socklen_t addrlen);
ssize_t recvfrom(int fd, void *buf, size_t n, int flags,
                 struct sockaddr *addr, socklen_t *addrlen);

/* stdio.h input: stdin is read through a buffer (getchar, fgets); the
 * output functions write at once (no buffer to flush). Do not mix read(0)
 * with getchar/fgets: the buffer may hold bytes read(0) would have seen. */
typedef struct hwemu_file FILE;
extern FILE *stdin, *stdout, *stderr;
int getchar(void);
int fgetc(FILE *f);
int getc(FILE *f);
char *fgets(char *buf, int size, FILE *f);
int fputc(int c, FILE *f);
int putc(int c, FILE *f);
int fputs(const char *s, FILE *f);
int fprintf(FILE *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int fflush(FILE *f);
int feof(FILE *f);

#endif
