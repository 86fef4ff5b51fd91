/* hwemu guest SDK: the UDP set-up and request/reply loop the network
 * samples share. */
#include <hwemu.h>

int parse_port(const char *s)
{
    char *end;
    long port = strtol(s, &end, 10);
    return *s != '\0' && *end == '\0' && port >= 1 && port <= 65535 ? (int)port : -1;
}

int port_arg(const char *name, const char *s)
{
    int port = parse_port(s);
    if (port < 0)
        printf("%s: bad port '%s' (want 1..65535)\n", name, s);
    return port;
}

long udp_bind_any(int port)
{
    long fd = sys_socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0)
        return fd;
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    long r = sys_bind((int)fd, &addr, sizeof addr);
    if (r < 0) {
        sys_close((int)fd);
        return r;
    }
    return fd;
}

long udp_listen(const char *name, int port)
{
    long fd = udp_bind_any(port);
    if (fd < 0)
        printf("%s: cannot bind UDP port %d: %ld\n", name, port, fd);
    return fd;
}

long udp_serve(int fd, char *buf, size_t cap, udp_answer_fn *answer, const char *name)
{
    /* Nothing here is written to memory between a datagram and its reply but what the kernel
     * writes (buf, peer): the count and the answer's verdict stay in registers. A callback that
     * wrote a reply pointer or a stop flag through the stack, or a counter of the caller's own,
     * made the CPU hold one more page modified, which the kernel's read of peer in sendto then
     * recalled (tests/integration/test_io_hops.py pins udpecho's echo at 12 messages). */
    long answered = 0;
    for (;;) {
        struct sockaddr_in peer;
        unsigned peerlen = sizeof peer;
        long n = sys_recvfrom(fd, buf, cap, 0, &peer, &peerlen);
        if (n < 0) {
            printf("%s: recvfrom failed: %ld\n", name, n);
            return n;
        }
        long len = answer(buf, (size_t)n, cap);
        long r = sys_sendto(fd, buf, (size_t)(len < 0 ? -len - 1 : len), 0, &peer, peerlen);
        if (r < 0) {
            printf("%s: sendto failed: %ld\n", name, r);
            return r;
        }
        if (len < 0)
            return answered;
        answered++;
    }
}
