/* wc: reads stdin to EOF in odd-sized chunks (so reads end mid-line) and
 * prints lines, words, bytes and a checksum, then the text upper-cased.
 * Proves read(0) delivers every byte once and in order, then returns 0.
 * The differential tests feed it wc.stdin. */
#include <stdio.h>

#define CHUNK 37

int main(void)
{
    static char text[8192];
    size_t len = 0;
    long n = 0;
    while (len + CHUNK <= sizeof text && (n = sys_read(0, text + len, CHUNK)) > 0)
        len += (size_t)n;
    if (n < 0) {
        printf("read failed: %ld\n", n);
        return 1;
    }
    unsigned lines = 0, words = 0;
    uint32_t sum = 0;
    int in_word = 0;
    for (size_t i = 0; i < len; i++) {
        char c = text[i];
        lines += c == '\n';
        int space = c == ' ' || c == '\n' || c == '\t';
        words += !space && !in_word;
        in_word = !space;
        sum = (sum << 5 | sum >> 27) ^ (unsigned char)c;
        if (c >= 'a' && c <= 'z')
            text[i] = (char)(c - 'a' + 'A');
    }
    printf("%u lines, %u words, %u bytes, checksum 0x%08x\n",
           lines, words, (unsigned)len, (unsigned)sum);
    sys_write(1, text, len);
    return 0;
}
