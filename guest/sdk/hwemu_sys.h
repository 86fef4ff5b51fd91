/*
 * hwemu guest ABI: Linux RV32 system call numbers and the raw `ecall` helper.
 *
 * These are the numbers of the asm-generic table as RV32 Linux uses it (no
 * 32-bit time_t calls: clock_gettime and nanosleep exist only as the *_time64
 * variants), so that a binary built with this SDK runs unchanged under
 * qemu-riscv32 (linux-user) and under hwemu's OS (DESIGN.md §4).
 *
 * Calling convention: a7 = number, a0..a5 = arguments, result in a0.
 * A negative result in [-4095, -1] is -errno; the wrappers in hwemu.h return
 * it as is (there is no errno variable).
 */
#ifndef HWEMU_SYS_H
#define HWEMU_SYS_H

#define SYS_openat                  56
#define SYS_close                   57
#define SYS_read                    63
#define SYS_write                   64
#define SYS_pread64                 67
#define SYS_pwrite64                68
#define SYS_fsync                   82
#define SYS_exit                    93
#define SYS_exit_group              94
#define SYS_getpid                  172
#define SYS_socket                  198
#define SYS_bind                    200
#define SYS_sendto                  206
#define SYS_recvfrom                207
#define SYS_brk                     214
#define SYS_clock_gettime64         403
#define SYS_clock_nanosleep_time64  407

#define HWEMU_EFAULT   14
#define HWEMU_ENOSYS   38

#ifndef __ASSEMBLER__
static inline long hwemu_syscall6(long n, long a0, long a1, long a2,
                                  long a3, long a4, long a5)
{
    register long r_a0 __asm__("a0") = a0;
    register long r_a1 __asm__("a1") = a1;
    register long r_a2 __asm__("a2") = a2;
    register long r_a3 __asm__("a3") = a3;
    register long r_a4 __asm__("a4") = a4;
    register long r_a5 __asm__("a5") = a5;
    register long r_a7 __asm__("a7") = n;
    __asm__ volatile("ecall"
                     : "+r"(r_a0)
                     : "r"(r_a1), "r"(r_a2), "r"(r_a3), "r"(r_a4), "r"(r_a5),
                       "r"(r_a7)
                     : "memory");
    return r_a0;
}

#define hwemu_syscall3(n, a, b, c) \
    hwemu_syscall6((n), (long)(a), (long)(b), (long)(c), 0, 0, 0)
#endif

#endif
