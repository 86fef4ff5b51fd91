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

/* The echo: the datagram itself, in place. It touches no memory but the
 * datagram, and that only when it may be "quit": no call (a call saves its
 * return address on the stack, the page the kernel writes the peer's
 * address to), no variable of its own. Each would make the CPU hold one
 * more page that the kernel then takes back from it, two messages more on
 * every echo (tests/integration/test_io_hops.py pins 12). */
static long echo(char *req, size_t n, size_t cap)
{
    (void)cap;
    if (n == 4 && req[0] == 'q' && req[1] == 'u' && req[2] == 'i' && req[3] == 't') {
        req[0] = 'b';
        req[1] = 'y';
        req[2] = 'e';
        return UDP_LAST(3);
    }
    return (long)n;
}

int main(int argc, char **argv)
{
    int port = argc > 1 ? port_arg("udpecho", argv[1]) : DEFAULT_PORT;
    if (port < 0)
        return 2;
    long fd = udp_listen("udpecho", port);
    if (fd < 0)
        return 1;
    printf("udpecho listening on %d\n", port);
    long served = udp_serve((int)fd, buf, sizeof buf, echo, "udpecho");
    if (served < 0)
        return 1;
    printf("udpecho served %ld datagrams\n", served);
    sys_close((int)fd);
    return 0;
}
