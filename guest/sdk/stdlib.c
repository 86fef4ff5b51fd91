/* hwemu guest SDK: stdlib.h — a bump allocator over brk, qsort, atoi. */
#include <hwemu.h>

/* malloc never reuses memory: free is a no-op. Each block carries its size
 * (for realloc) and is 8-byte aligned. Fresh brk memory is zero. */
static uintptr_t heap_cur, heap_end;

void *malloc(size_t n)
{
    if (!heap_cur)
        heap_cur = heap_end = (uintptr_t)sys_brk(0);
    size_t need = (n + 8 + 7) & ~(size_t)7;
    if (need < n || heap_end - heap_cur < need) {
        uintptr_t want = (heap_cur + need + 0xfff) & ~(uintptr_t)0xfff;
        if (want < heap_cur || (uintptr_t)sys_brk((void *)want) != want)
            return NULL;
        heap_end = want;
    }
    size_t *block = (size_t *)heap_cur;
    block[0] = n;
    heap_cur += need;
    return block + 2;
}

void free(void *p) { (void)p; }

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
    void *q = malloc(n);
    if (p && q) {
        size_t old = ((size_t *)p)[-2];
        memcpy(q, p, old < n ? old : n);
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
