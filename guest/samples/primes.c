/* primes: sieve of Eratosthenes below N (default 2000, or argv[1]).
 * Proves byte stores/loads over a heap array from malloc (brk), nested loops,
 * multiplication, and formatted output with field widths. */
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 2000;
    unsigned char *composite = calloc(n, 1);
    if (!composite) {
        printf("calloc(%d) failed\n", n);
        return 1;
    }
    for (int i = 2; i * i < n; i++)
        if (!composite[i])
            for (int j = i * i; j < n; j += i)
                composite[j] = 1;
    int count = 0;
    unsigned sum = 0;
    for (int i = 2; i < n; i++) {
        if (composite[i])
            continue;
        printf(count % 10 == 0 ? "%5d" : " %5d", i);
        if (++count % 10 == 0)
            printf("\n");
        sum += i;
    }
    if (count % 10)
        printf("\n");
    printf("%d primes below %d, sum %u\n", count, n, sum);
    return 0;
}
