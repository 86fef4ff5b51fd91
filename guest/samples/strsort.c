/* strsort: builds words with snprintf and string functions, sorts them with
 * qsort, and prints a checksum. Proves the libc string paths (strcpy, strcat,
 * strcmp, memcpy, strlen), indirect calls through a comparator, heap growth
 * over several brk calls, and unsigned arithmetic that wraps. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NWORDS 400

static const char *syllables[] = {
    "ka", "ri", "to", "mu", "sen", "lo", "pa", "vi", "dor", "ne", "zu", "qui",
};
#define NSYL (sizeof syllables / sizeof syllables[0])

static int by_string(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(void)
{
    char **words = malloc(NWORDS * sizeof *words);
    uint32_t seed = 12345;
    for (int i = 0; i < NWORDS; i++) {
        char buf[64];
        buf[0] = 0;
        int parts = 1 + i % 4;
        for (int p = 0; p < parts; p++) {
            seed = seed * 1103515245u + 12345u;     /* LCG: wraps mod 2^32 */
            strcat(buf, syllables[(seed >> 16) % NSYL]);
        }
        char tail[16];
        snprintf(tail, sizeof tail, "-%03d", i % 1000);
        strcat(buf, tail);
        words[i] = malloc(strlen(buf) + 1);
        strcpy(words[i], buf);
    }
    qsort(words, NWORDS, sizeof *words, by_string);

    uint32_t checksum = 0;
    size_t total = 0;
    for (int i = 0; i < NWORDS; i++) {
        for (const char *c = words[i]; *c; c++)
            checksum = checksum * 31 + (unsigned char)*c;
        total += strlen(words[i]);
    }
    for (int i = 0; i < NWORDS; i += NWORDS / 10)
        printf("words[%3d] = %s\n", i, words[i]);
    printf("first %s, last %s\n", words[0], words[NWORDS - 1]);
    printf("%d words, %u chars, checksum 0x%08x\n", NWORDS, (unsigned)total, (unsigned)checksum);
    for (int i = 1; i < NWORDS; i++)
        if (strcmp(words[i - 1], words[i]) > 0) {
            printf("NOT SORTED at %d\n", i);
            return 1;
        }
    return 0;
}
