/* A worked example of the guest SDK's POSIX names (docs/guest-sdk.md):
 * reads names from standard input, one per line, greets each, then prints
 * them sorted. It uses fgets and getchar (buffered stdin), printf/puts,
 * malloc/realloc/free, clock_gettime/nanosleep, write, errno and
 * fprintf(stderr, ...).
 *
 *   printf 'Ada\nAlan\n' | hwemu cpu run guest/build/samples/greet.elf
 *   printf 'Ada\nAlan\n' | hwemu run compose/native.toml guest/build/samples/greet.elf
 *   printf 'Ada\nAlan\n' | qemu-riscv32 guest/build/samples/greet.elf
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(int argc, char **argv)
{
    int timed = argc > 1 && strcmp(argv[1], "-t") == 0;
    struct timespec t0, t1, nap = {0, 2000000};   /* 2 ms */
    clock_gettime(CLOCK_MONOTONIC, &t0);

    /* the first character alone, through getchar: '#' starts a comment line */
    int first = getchar();
    if (first == '#') {
        while (first != '\n' && first != EOF)
            first = getchar();
        puts("(a comment line, skipped)");
    }

    char line[64];
    char **names = NULL;
    size_t count = 0, cap = 0;
    int carry = first != '#' && first != EOF;
    while (carry || fgets(line, sizeof line, stdin)) {
        if (carry) {                 /* the character getchar took starts this line */
            line[0] = (char)first;
            if (first == '\n' || !fgets(line + 1, sizeof line - 1, stdin))
                line[1] = '\0';
            carry = 0;
        }
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        if (!line[0])
            continue;
        if (count == cap) {
            cap = cap ? 2 * cap : 2;
            names = realloc(names, cap * sizeof *names);
        }
        names[count] = malloc(strlen(line) + 1);
        strcpy(names[count], line);
        printf("hello, %s!\n", names[count]);
        count++;
    }

    qsort(names, count, sizeof *names, by_name);
    printf("%d names, sorted:\n", (int)count);
    for (size_t i = 0; i < count; i++) {
        printf("  %s\n", names[i]);
        free(names[i]);
    }
    free(names);

    /* freed memory is used again: the same size comes back from the free list */
    void *a = malloc(40);
    free(a);
    printf("free list: %s\n", malloc(40) == a ? "block reused" : "NOT reused");

    /* POSIX errors: -1 and errno */
    if (write(-1, "x", 1) == -1 && errno == EBADF)
        puts("write(-1): EBADF");

    /* `greet -t`: how long it took, on stderr (off by default: times differ from run to run) */
    if (nanosleep(&nap, NULL) == 0 && clock_gettime(CLOCK_MONOTONIC, &t1) == 0) {
        if (!timed)
            return 0;
        long long us = ((t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec)) / 1000;
        fprintf(stderr, "greet: %lld us, a 2 ms nap included\n", us);
    } else if (timed) {
        fprintf(stderr, "greet: no clock here (errno %d)\n", errno);
    }
    return 0;
}
