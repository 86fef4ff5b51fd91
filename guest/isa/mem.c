/* isa/mem: lb/lh/lw/lbu/lhu sign and zero extension, sb/sh/sw, positive and
 * negative offsets, and misaligned lh/lhu/lw/sh/sw, including accesses that
 * straddle a page boundary (offsets 4093..4095 of a 4096-aligned buffer). */
#include "isa.h"

static uint8_t buf[8192] __attribute__((aligned(4096)));

static void fill(void)
{
    /* Bytes with every high-bit/low-bit mix: 0x80, 0xff, 0x7f, 0x00 ... */
    for (int i = 0; i < 8192; i++)
        buf[i] = (uint8_t)(i * 0x25 + 0x7f);
    /* sign bits set on both sides of the page boundary */
    buf[4093] = 0xf0;
    buf[4094] = 0x81;
    buf[4095] = 0xc2;
    buf[4096] = 0x93;
    buf[4097] = 0xa4;
}

/* Immediates reach only +-2047: split off as base register + (off % 64). */
#define LOAD(op, off)                                                        \
    do {                                                                     \
        uint32_t r_;                                                         \
        __asm__ volatile(#op " %0, %2(%1)"                                   \
                         : "=r"(r_) : "r"(buf + (off) - (off) % 64),         \
                           "i"((off) % 64) : "memory");                      \
        printf(#op " buf+%d = 0x%08x\n", (off), (unsigned)r_);               \
    } while (0)

#define LOAD_ALL(off)                                                        \
    do {                                                                     \
        LOAD(lb, off);                                                       \
        LOAD(lbu, off);                                                      \
        LOAD(lh, off);                                                       \
        LOAD(lhu, off);                                                      \
        LOAD(lw, off);                                                       \
    } while (0)

/* Store v at buf+off, then print the 8 bytes around it as little-endian. */
#define STORE(op, off, v)                                                    \
    do {                                                                     \
        fill();                                                              \
        __asm__ volatile(#op " %1, %2(%0)"                                   \
                         : : "r"(buf + (off) - (off) % 64), "r"(v),          \
                           "i"((off) % 64) : "memory");                      \
        printf(#op " 0x%08x at buf+%d:", (unsigned)(v), (off));              \
        for (int k_ = (off) - 2; k_ < (off) + 6; k_++)                       \
            printf(" %02x", buf[k_]);                                        \
        printf("\n");                                                        \
    } while (0)

#define STORE_ALL(off)                                                       \
    do {                                                                     \
        STORE(sb, off, 0xa1b2c3d4u);                                         \
        STORE(sh, off, 0xa1b2c3d4u);                                         \
        STORE(sw, off, 0xa1b2c3d4u);                                         \
    } while (0)

int main(void)
{
    fill();
    /* aligned and misaligned within a page */
    for (int k = 0; k < 8; k++)
        printf("buf[%d] = 0x%02x\n", k, buf[k]);
    LOAD_ALL(0);
    LOAD_ALL(1);
    LOAD_ALL(2);
    LOAD_ALL(3);
    LOAD_ALL(4);
    LOAD_ALL(5);
    /* across the page boundary at 4096 */
    LOAD_ALL(4093);
    LOAD_ALL(4094);
    LOAD_ALL(4095);
    LOAD_ALL(4096);

    /* negative offsets from a base in the second page */
    uint32_t r;
    const uint8_t *mid = buf + 4096;
    __asm__ volatile("lw %0, -4(%1)" : "=r"(r) : "r"(mid) : "memory");
    printf("lw mid-4 = 0x%08x\n", (unsigned)r);
    __asm__ volatile("lh %0, -1(%1)" : "=r"(r) : "r"(mid) : "memory");
    printf("lh mid-1 = 0x%08x\n", (unsigned)r);
    __asm__ volatile("lbu %0, -2048(%1)" : "=r"(r) : "r"(mid) : "memory");
    printf("lbu mid-2048 = 0x%08x\n", (unsigned)r);

    STORE_ALL(8);
    STORE_ALL(9);
    STORE_ALL(10);
    STORE_ALL(11);
    STORE_ALL(4093);
    STORE_ALL(4094);
    STORE_ALL(4095);

    /* a misaligned store read back by a misaligned load across the page */
    fill();
    __asm__ volatile("sw %1, 0(%2)\n\tlw %0, 0(%2)"
                     : "=&r"(r) : "r"(0xcafef00du), "r"(buf + 4094) : "memory");
    printf("sw/lw round trip at buf+4094 = 0x%08x\n", (unsigned)r);
    return 0;
}
