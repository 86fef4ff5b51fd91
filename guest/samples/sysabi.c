/* sysabi: the Linux syscall ABI details that the standalone CPU runner and
 * the OS must share with qemu-riscv32: brk growing, shrinking and refusing,
 * reads at EOF, zero-length writes, a bad file descriptor (-EBADF), an
 * unknown syscall number (-ENOSYS), and main's return value reaching
 * exit_group (this program exits 7, see sysabi.exit). Prints properties,
 * never addresses, since the initial brk differs between loaders. */
#include <stdio.h>

extern char _end[];     /* end of bss, from link.ld */

#define BAD_FD 9
#define UNKNOWN_SYSCALL 999

static void check(const char *what, int ok)
{
    printf("%s: %s\n", what, ok ? "yes" : "NO");
}

int main(void)
{
    uintptr_t b0 = (uintptr_t)sys_brk(0);
    check("brk(0) is at or after _end", b0 >= (uintptr_t)_end);
    uintptr_t grown = (uintptr_t)sys_brk((void *)(b0 + 10000));
    check("brk grows by 10000 bytes", grown == b0 + 10000);
    volatile char *heap = (volatile char *)b0;
    heap[0] = 'a';
    heap[9999] = 'z';
    check("new brk memory is writable and was zero",
          heap[0] == 'a' && heap[9999] == 'z' && heap[5000] == 0);
    check("brk(0) reports the grown break", (uintptr_t)sys_brk(0) == b0 + 10000);
    check("brk shrinks back", (uintptr_t)sys_brk((void *)b0) == b0);
    check("brk below the start is refused (returns the current break)",
          (uintptr_t)sys_brk((void *)0x1000) == b0);

    char buf[16];
    printf("read(0) at EOF = %ld\n", sys_read(0, buf, sizeof buf));
    printf("write(1, buf, 0) = %ld\n", sys_write(1, buf, 0));
    printf("write(%d) = %ld\n", BAD_FD, sys_write(BAD_FD, "x", 1));
    printf("syscall %d = %ld\n", UNKNOWN_SYSCALL,
           hwemu_syscall3(UNKNOWN_SYSCALL, 0, 0, 0));
    printf("exiting with 7\n");
    return 7;
}
