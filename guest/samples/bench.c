/* bench: a compute benchmark of a few million instructions (about a second at
 * 5 MIPS) mixing loads, stores, branches, mul, div and rem, with a checksum.
 * Used by bench/cpu.py; the output proves the interpreter got every step
 * right. ROUNDS may be given as argv[1] (default 16). */
#include <stdio.h>
#include <stdlib.h>

#define N 256

static uint32_t a[N], b[N];
static uint8_t bytes[N];

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 16;
    uint32_t x = 0x9e3779b9, sum = 0;
    for (int i = 0; i < N; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        a[i] = x;
        b[i] = (x >> 7) | 1;
        bytes[i] = (uint8_t)x;
    }
    for (int r = 0; r < rounds; r++) {
        for (int i = 0; i < N; i++) {
            for (int j = 0; j < 32; j++) {
                uint32_t v = a[(i + j) & (N - 1)];
                uint32_t w = b[(i * 7 + j) & (N - 1)];
                if (v & 1)
                    sum += v * w;
                else
                    sum ^= (v / w) + (v % (j + 1));
                if ((int32_t)sum < 0)
                    sum = (sum << 1) | (sum >> 31);
                sum += bytes[(sum ^ j) & (N - 1)];
            }
            a[i] = sum ^ a[i];
            bytes[i] = (uint8_t)(bytes[i] + (sum >> 24));
        }
    }
    printf("bench: %d rounds, checksum 0x%08x\n", rounds, (unsigned)sum);
    return 0;
}
