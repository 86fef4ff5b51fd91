/* hwemu guest SDK: the printf family.
 *
 * Supports %d %i %u %x %X %o %c %s %p %%, flags '-' '0' '+' ' ', width and
 * precision (also '*'), length modifiers hh h l ll z t j. No floating point.
 * printf formats into a stack buffer and ends in one sys_write per 256 bytes,
 * so output from one call is never interleaved with another process's. */
#include <hwemu.h>

struct sink {
    char *buf;
    size_t size;        /* capacity of buf */
    size_t len;         /* bytes stored in buf so far */
    size_t total;       /* bytes produced in all */
    int fd;             /* >= 0: flush buf to fd when full */
};

static void put(struct sink *o, char c)
{
    if (o->len == o->size && o->fd >= 0) {
        sys_write(o->fd, o->buf, o->len);
        o->len = 0;
    }
    if (o->len < o->size)
        o->buf[o->len++] = c;
    o->total++;
}

static void pad(struct sink *o, char c, int n)
{
    while (n-- > 0)
        put(o, c);
}

/* One converted field: sign/prefix, zeros to precision, then digits. */
static void emit_field(struct sink *o, const char *prefix, const char *body, int len,
                       int width, int prec, int left, int zero)
{
    int plen = (int)strlen(prefix);
    int zeros = prec > len ? prec - len : 0;
    int fill = width - plen - zeros - len;
    if (!left && !zero)
        pad(o, ' ', fill);
    for (const char *p = prefix; *p; p++)
        put(o, *p);
    if (!left && zero)
        pad(o, '0', fill);
    pad(o, '0', zeros);
    for (int i = 0; i < len; i++)
        put(o, body[i]);
    if (left)
        pad(o, ' ', fill);
}

static int format(struct sink *o, const char *fmt, va_list ap)
{
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            put(o, *fmt);
            continue;
        }
        int left = 0, zero = 0, plus = 0, space = 0, width = 0, prec = -1, lng = 0;
        for (;; fmt++) {
            if (fmt[1] == '-') left = 1;
            else if (fmt[1] == '0') zero = 1;
            else if (fmt[1] == '+') plus = 1;
            else if (fmt[1] == ' ') space = 1;
            else break;
        }
        fmt++;
        if (*fmt == '*') {
            width = va_arg(ap, int);
            if (width < 0)
                left = 1, width = -width;
            fmt++;
        }
        for (; *fmt >= '0' && *fmt <= '9'; fmt++)
            width = width * 10 + (*fmt - '0');
        if (*fmt == '.') {
            prec = 0;
            if (*++fmt == '*') {
                prec = va_arg(ap, int);
                fmt++;
            }
            for (; *fmt >= '0' && *fmt <= '9'; fmt++)
                prec = prec * 10 + (*fmt - '0');
        }
        for (;; fmt++) {
            if (*fmt == 'l') lng++;
            else if (*fmt == 'h' || *fmt == 'z' || *fmt == 't' || *fmt == 'j') ;
            else break;
        }
        char c = *fmt, digits[24];
        const char *prefix = "";
        unsigned base = 10;
        unsigned long long v;
        switch (c) {
        case '\0':
            return 0;
        case 'c':
            digits[0] = (char)va_arg(ap, int);
            emit_field(o, "", digits, 1, width, -1, left, 0);
            continue;
        case 's': {
            const char *s = va_arg(ap, const char *);
            if (!s)
                s = "(null)";
            int len = 0;
            while (s[len] && (prec < 0 || len < prec))
                len++;
            emit_field(o, "", s, len, width, -1, left, 0);
            continue;
        }
        case 'd': case 'i': {
            long long sv = lng >= 2 ? va_arg(ap, long long) : va_arg(ap, long);
            v = sv < 0 ? -(unsigned long long)sv : (unsigned long long)sv;
            prefix = sv < 0 ? "-" : plus ? "+" : space ? " " : "";
            break;
        }
        case 'p':
            v = (uintptr_t)va_arg(ap, void *);
            prefix = "0x";
            base = 16;
            break;
        case 'u': case 'x': case 'X': case 'o':
            v = lng >= 2 ? va_arg(ap, unsigned long long) : va_arg(ap, unsigned long);
            base = c == 'u' ? 10 : c == 'o' ? 8 : 16;
            break;
        default:            /* '%%' and unknown conversions print themselves */
            put(o, c);
            continue;
        }
        const char *alphabet = c == 'X' ? "0123456789ABCDEF" : "0123456789abcdef";
        int len = 0;
        char *end = digits + sizeof digits;
        /* 32-bit values avoid the slow 64-bit division helper from libgcc. */
        if (v >> 32 == 0) {
            for (uint32_t w = (uint32_t)v; w || (len == 0 && prec != 0); w /= base)
                *--end = alphabet[w % base], len++;
        } else {
            for (; v; v /= base)
                *--end = alphabet[v % base], len++;
        }
        emit_field(o, prefix, end, len, width, prec, left, zero && prec < 0);
    }
    return 0;
}

int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
    struct sink o = { buf, size ? size - 1 : 0, 0, 0, -1 };
    format(&o, fmt, ap);
    if (size)
        buf[o.len] = 0;
    return (int)o.total;
}

int snprintf(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    return n;
}

int vdprintf(int fd, const char *fmt, va_list ap)
{
    char buf[256];
    struct sink o = { buf, sizeof buf, 0, 0, fd };
    format(&o, fmt, ap);
    if (o.len)
        sys_write(fd, buf, o.len);
    return (int)o.total;
}

int dprintf(int fd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vdprintf(fd, fmt, ap);
    va_end(ap);
    return n;
}

int printf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vdprintf(1, fmt, ap);
    va_end(ap);
    return n;
}

int puts(const char *s)
{
    return dprintf(1, "%s\n", s);
}

int putchar(int c)
{
    char ch = (char)c;
    sys_write(1, &ch, 1);
    return (unsigned char)c;
}
