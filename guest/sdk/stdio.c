/* hwemu guest SDK: stdio streams. Input (stdin) goes through a buffer, so
 * that getchar and fgets cost one read(2) per buffer, not per byte (a system
 * call is a trap to the OS node: a message round trip). Output has no
 * buffer: each call is one write(2), as printf's. */
#include <hwemu.h>

struct hwemu_file {
    int fd;
    int eof;
    size_t pos, len;
    unsigned char buf[512];
};

static struct hwemu_file files[3] = {{.fd = 0}, {.fd = 1}, {.fd = 2}};
FILE *stdin = &files[0], *stdout = &files[1], *stderr = &files[2];

int fgetc(FILE *f)
{
    if (f->pos == f->len) {
        if (f->eof)
            return EOF;
        ssize_t n = read(f->fd, f->buf, sizeof f->buf);
        if (n <= 0) {
            f->eof = 1;  /* end of input, or an error (errno says which) */
            return EOF;
        }
        f->pos = 0;
        f->len = (size_t)n;
    }
    return f->buf[f->pos++];
}

int getc(FILE *f) { return fgetc(f); }
int getchar(void) { return fgetc(stdin); }
int feof(FILE *f) { return f->eof && f->pos == f->len; }

/* Up to size-1 bytes, through the first newline (kept); NULL at EOF with nothing read. */
char *fgets(char *buf, int size, FILE *f)
{
    int i = 0;
    if (size <= 0)
        return NULL;
    while (i < size - 1) {
        int c = fgetc(f);
        if (c == EOF)
            break;
        buf[i++] = (char)c;
        if (c == '\n')
            break;
    }
    if (i == 0)
        return NULL;
    buf[i] = '\0';
    return buf;
}

int fputc(int c, FILE *f)
{
    unsigned char b = (unsigned char)c;
    return write(f->fd, &b, 1) == 1 ? b : EOF;
}

int putc(int c, FILE *f) { return fputc(c, f); }

int fputs(const char *s, FILE *f)
{
    size_t n = strlen(s);
    return write(f->fd, s, n) == (ssize_t)n ? 0 : EOF;
}

int fprintf(FILE *f, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vdprintf(f->fd, fmt, ap);
    va_end(ap);
    return n;
}

int fflush(FILE *f)
{
    (void)f;  /* output is never buffered */
    return 0;
}
