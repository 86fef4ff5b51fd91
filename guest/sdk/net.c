/* hwemu guest SDK: the UDP set-up the network samples share. */
#include <hwemu.h>

int parse_port(const char *s)
{
    char *end;
    long port = strtol(s, &end, 10);
    return *s != '\0' && *end == '\0' && port >= 1 && port <= 65535 ? (int)port : -1;
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
