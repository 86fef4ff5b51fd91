/* hwemu guest SDK: stdlib.h — malloc/free over brk, qsort, atoi. */
#include <hwemu.h>

/* malloc: first fit over a free list, fresh memory from brk. Each block
 * has an 8-byte header holding its capacity (the payload bytes it can hold,
 * a multiple of 8; 8-byte aligned); a free block keeps the next free block
 * in its payload. free() puts a block on the list; malloc takes the first
 * that fits and splits off what is left if that can hold a block of its
 * own. Neighbouring free blocks are not merged. */
struct block {
    size_t cap;
    size_t pad;                 /* keeps the payload 8-byte aligned */
};
#define HDR sizeof(struct block)
static uintptr_t heap_cur, heap_end;
static struct block *free_list;

static void **next_of(struct block *b) { return (void **)(b + 1); }

void *malloc(size_t n)
{
    size_t cap = (n + 7) & ~(size_t)7;
    if (cap < n)
        return NULL;
    if (cap < sizeof(void *))
        cap = sizeof(void *);
    for (struct block **at = &free_list; *at; at = (struct block **)next_of(*at)) {
        struct block *b = *at;
        if (b->cap < cap)
            continue;
        *at = *next_of(b);
        if (b->cap >= cap + HDR + 16) {    /* the rest becomes a free block */
            struct block *rest = (struct block *)((char *)(b + 1) + cap);
            rest->cap = b->cap - cap - HDR;
            *next_of(rest) = free_list;
            free_list = rest;
            b->cap = cap;
        }
        return b + 1;
    }
    if (!heap_cur)
        heap_cur = heap_end = ((uintptr_t)sys_brk(0) + 7) & ~(uintptr_t)7;
    size_t need = cap + HDR;
    if (need < cap || heap_end - heap_cur < need) {
        uintptr_t want = (heap_cur + need + 0xfff) & ~(uintptr_t)0xfff;
        if (want < heap_cur || (uintptr_t)sys_brk((void *)want) != want)
            return NULL;
        heap_end = want;
    }
    struct block *b = (struct block *)heap_cur;
    b->cap = cap;
    heap_cur += need;
    return b + 1;
}

void free(void *p)
{
    if (!p)
        return;
    struct block *b = (struct block *)p - 1;
    *next_of(b) = free_list;
    free_list = b;
}

void *calloc(size_t count, size_t size)
{
    size_t n = count * size;
    if (size && n / size != count)
        return NULL;
    void *p = malloc(n);
    return p ? memset(p, 0, n) : NULL;
}

void *realloc(void *p, size_t n)
{
    if (p && ((struct block *)p - 1)->cap >= n)
        return p;
    void *q = malloc(n);
    if (p && q) {
        size_t old = ((struct block *)p - 1)->cap;
        memcpy(q, p, old < n ? old : n);
        free(p);
    }
    return q;
}

static void swap_bytes(char *a, char *b, size_t size)
{
    while (size--) {
        char t = *a;
        *a++ = *b;
        *b++ = t;
    }
}

/* Shell sort: in place, no recursion, deterministic. */
void qsort(void *base, size_t count, size_t size,
           int (*cmp)(const void *, const void *))
{
    char *b = base;
    size_t gap = 1;
    while (gap < count / 3)
        gap = gap * 3 + 1;
    for (; gap > 0; gap /= 3)
        for (size_t i = gap; i < count; i++)
            for (size_t j = i; j >= gap && cmp(b + (j - gap) * size, b + j * size) > 0;
                 j -= gap)
                swap_bytes(b + (j - gap) * size, b + j * size, size);
}

long strtol(const char *s, char **end, int base)
{
    while (*s == ' ' || *s == '\t' || *s == '\n')
        s++;
    int neg = *s == '-';
    if (*s == '-' || *s == '+')
        s++;
    if ((base == 0 || base == 16) && s[0] == '0' && (s[1] == 'x' || s[1] == 'X'))
        s += 2, base = 16;
    else if (base == 0)
        base = s[0] == '0' ? 8 : 10;
    unsigned long v = 0;
    for (;; s++) {
        int d = *s >= '0' && *s <= '9' ? *s - '0'
              : *s >= 'a' && *s <= 'z' ? *s - 'a' + 10
              : *s >= 'A' && *s <= 'Z' ? *s - 'A' + 10 : 99;
        if (d >= base)
            break;
        v = v * base + d;
    }
    if (end)
        *end = (char *)s;
    return neg ? -(long)v : (long)v;
}

int atoi(const char *s) { return (int)strtol(s, NULL, 10); }
