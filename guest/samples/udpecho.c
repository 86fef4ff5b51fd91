/* udpecho: a UDP echo server.
 *
 *     udpecho [port]          (default 7000, must be 1..65535)
 *
 * Binds an AF_INET/SOCK_DGRAM socket to INADDR_ANY:port, prints
 * "udpecho listening on <port>", then sends every datagram it receives back
 * to its sender, byte for byte (an empty datagram gets an empty reply). A
 * datagram that is exactly "quit" is answered "bye" instead, and the server
 * prints "udpecho served <N> datagrams" (N: datagrams echoed, the "quit" not
 * counted) and exits 0. A failing socket/bind/recvfrom/sendto prints one
 * line with the raw -errno and exits 1; a bad port exits 2.
 *
 * Needs a network, so it is not one of the differential tests' stdout
 * samples: tests/guest/test_network_samples.py drives it over UDP. */
#include <stdio.h>
#include <string.h>

#define DEFAULT_PORT 7000
#define MAX_DATAGRAM 65507          /* the largest UDP payload over IPv4 */

static char buf[MAX_DATAGRAM + 1];

int main(int argc, char **argv)
{
    int port = argc > 1 ? parse_port(argv[1]) : DEFAULT_PORT;
    if (port < 0) {
        printf("udpecho: bad port '%s' (want 1..65535)\n", argv[1]);
        return 2;
    }
    long fd = udp_bind_any(port);
    if (fd < 0) {
        printf("udpecho: cannot bind UDP port %d: %ld\n", port, fd);
        return 1;
    }
    printf("udpecho listening on %d\n", port);

    unsigned served = 0;
    for (;;) {
        struct sockaddr_in peer;
        unsigned peerlen = sizeof peer;
        long n = sys_recvfrom((int)fd, buf, sizeof buf, 0, &peer, &peerlen);
        if (n < 0) {
            printf("udpecho: recvfrom failed: %ld\n", n);
            return 1;
        }
        int quit = n == 4 && memcmp(buf, "quit", 4) == 0;
        long r = quit ? sys_sendto((int)fd, "bye", 3, 0, &peer, peerlen)
                      : sys_sendto((int)fd, buf, (size_t)n, 0, &peer, peerlen);
        if (r < 0) {
            printf("udpecho: sendto failed: %ld\n", r);
            return 1;
        }
        if (quit)
            break;
        served++;
    }
    printf("udpecho served %u datagrams\n", served);
    sys_close((int)fd);
    return 0;
}
