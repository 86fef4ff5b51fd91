/* iobad: the disk and network syscalls given bad input must fail cleanly
 * and leave the program running (DESIGN.md §6).
 *
 *     iobad <block device> <its size in bytes> <udp port>
 *
 * Prints one line per call: the call and its raw result (-errno on failure),
 * then "iobad done". Linux semantics on a block device: a pread64 at its end
 * returns 0 (EOF), one straddling the end a short count; a pwrite64 at the
 * end fails with -ENOSPC (-28), one straddling it is short. Bad buffers are
 * -EFAULT (-14); an oversized datagram -EMSGSIZE (-90); other address
 * families -EAFNOSUPPORT (-97), other socket types -EPROTONOSUPPORT (-93).
 * Byte offsets and lengths that are not block multiples round-trip exactly.
 *
 * Needs a block device and a network, so it is not one of the differential
 * tests' stdout samples: tests/integration/test_io.py runs it on the cluster. */
#include <stdio.h>
#include <string.h>
#include <stdlib.h>

#define WILD ((void *)0x00000ff0)      /* below the text segment: never mapped */

static char buf[4096];
static char back[4096];
static char big[70000];

int main(int argc, char **argv)
{
    if (argc != 4) {
        printf("usage: iobad <block device> <size> <udp port>\n");
        return 2;
    }
    int64_t size = strtol(argv[2], 0, 10);
    int port = parse_port(argv[3]);

    printf("openat(nosuchfile) = %ld\n", sys_openat(AT_FDCWD, "/nosuchfile", O_RDWR, 0));
    long fd = sys_openat(AT_FDCWD, argv[1], O_RDWR, 0);
    printf("openat(device) ok = %d\n", fd >= 3);
    printf("pread64(end) = %ld\n", sys_pread64((int)fd, buf, 512, size));
    printf("pread64(past end) = %ld\n", sys_pread64((int)fd, buf, 512, size + 4096));
    printf("pread64(straddling end) = %ld\n", sys_pread64((int)fd, buf, 1000, size - 100));
    printf("pwrite64(end) = %ld\n", sys_pwrite64((int)fd, buf, 512, size));
    printf("pwrite64(straddling end) = %ld\n", sys_pwrite64((int)fd, buf, 300, size - 200));
    printf("pread64(negative offset) = %ld\n", sys_pread64((int)fd, buf, 16, -512));
    printf("pwrite64(wild buffer) = %ld\n", sys_pwrite64((int)fd, WILD, 512, 0));
    printf("pread64(wild buffer) = %ld\n", sys_pread64((int)fd, WILD, 512, 0));
    printf("pread64(bad fd) = %ld\n", sys_pread64(42, buf, 16, 0));

    /* unaligned offset and length, across a block boundary and a page of blocks */
    for (int i = 0; i < 3001; i++)
        buf[i] = (char)(i * 7 + 3);
    printf("pwrite64(unaligned) = %ld\n", sys_pwrite64((int)fd, buf, 3001, 1000));
    printf("fsync = %ld\n", sys_fsync((int)fd));
    memset(back, 0, sizeof back);
    printf("pread64(unaligned) = %ld\n", sys_pread64((int)fd, back, 3001, 1000));
    printf("round trip equal = %d\n", memcmp(buf, back, 3001) == 0);
    printf("close = %ld\n", sys_close((int)fd));
    printf("close again = %ld\n", sys_close((int)fd));

    printf("socket(AF_INET6) = %ld\n", sys_socket(10, SOCK_DGRAM, 0));
    printf("socket(SOCK_STREAM) = %ld\n", sys_socket(AF_INET, 1, 0));
    long s = udp_bind_any(port);
    printf("socket+bind ok = %d\n", s >= 3);
    struct sockaddr_in peer;
    unsigned peerlen = sizeof peer;
    printf("recvfrom(wild buffer) = %ld\n", sys_recvfrom((int)s, WILD, 64, 0, &peer, &peerlen));
    printf("recvfrom(wild addrlen) = %ld\n", sys_recvfrom((int)s, buf, 64, 0, &peer, WILD));
    memset(&peer, 0, sizeof peer);
    peer.sin_family = AF_INET;
    peer.sin_port = htons(9);
    peer.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    printf("sendto(oversized) = %ld\n", sys_sendto((int)s, big, sizeof big, 0, &peer, sizeof peer));
    printf("sendto(wild buffer) = %ld\n", sys_sendto((int)s, WILD, 16, 0, &peer, sizeof peer));
    printf("sendto(wild address) = %ld\n", sys_sendto((int)s, buf, 16, 0, WILD, sizeof peer));
    printf("bind(bound again) = %ld\n", sys_bind((int)s, &peer, sizeof peer));
    printf("close(socket) = %ld\n", sys_close((int)s));
    printf("iobad done\n");
    return 0;
}
