/* mixed: what real programs do, in three parts, with a checksum each.
 * - lists: a linked list built from malloc'd nodes, merge-sorted, walked;
 * - matrix: integer matrix products and a transpose (strided loads, mul);
 * - state machine: a tokenizer for a tiny expression language driven by a
 *   switch over a generated character stream (jump tables, byte loads).
 * Used by bench/cpu.py beside bench.c; the output proves every step right.
 * ROUNDS may be given as argv[1] (default 4). */
#include <stdio.h>
#include <stdlib.h>

struct node {
    struct node *next;
    uint32_t key;
};

static uint32_t rng = 0x2545f491;

static uint32_t next_random(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    return rng;
}

static struct node *merge(struct node *a, struct node *b)
{
    struct node head, *tail = &head;
    while (a && b) {
        if (a->key <= b->key) {
            tail->next = a;
            a = a->next;
        } else {
            tail->next = b;
            b = b->next;
        }
        tail = tail->next;
    }
    tail->next = a ? a : b;
    return head.next;
}

static struct node *sort(struct node *list)
{
    if (!list || !list->next)
        return list;
    struct node *slow = list, *fast = list->next;
    while (fast && fast->next) {
        slow = slow->next;
        fast = fast->next->next;
    }
    struct node *second = slow->next;
    slow->next = NULL;
    return merge(sort(list), sort(second));
}

static uint32_t lists(struct node *pool, int count)
{
    struct node *list = NULL;
    for (int i = 0; i < count; i++) {
        pool[i].key = next_random() % 10007;
        pool[i].next = list;
        list = &pool[i];
    }
    list = sort(list);
    uint32_t sum = 0, last = 0;
    for (struct node *p = list; p; p = p->next) {
        if (p->key < last)
            return 0xdeadbeef; /* not sorted: a wrong CPU */
        sum = sum * 31 + p->key;
        last = p->key;
    }
    return sum;
}

#define DIM 24

static int32_t ma[DIM][DIM], mb[DIM][DIM], mc[DIM][DIM];

static uint32_t matrix(void)
{
    for (int i = 0; i < DIM; i++)
        for (int j = 0; j < DIM; j++) {
            ma[i][j] = (int32_t)(next_random() % 201) - 100;
            mb[i][j] = (int32_t)(next_random() % 201) - 100;
        }
    for (int i = 0; i < DIM; i++)
        for (int j = 0; j < DIM; j++) {
            int32_t acc = 0;
            for (int k = 0; k < DIM; k++)
                acc += ma[i][k] * mb[k][j];
            mc[i][j] = acc;
        }
    for (int i = 0; i < DIM; i++) /* transpose in place */
        for (int j = i + 1; j < DIM; j++) {
            int32_t t = mc[i][j];
            mc[i][j] = mc[j][i];
            mc[j][i] = t;
        }
    uint32_t sum = 0;
    for (int i = 0; i < DIM; i++)
        for (int j = 0; j < DIM; j++)
            sum = (sum << 3 | sum >> 29) ^ (uint32_t)mc[i][j];
    return sum;
}

enum state { START, NUMBER, NAME, OPERATOR, SPACE };

static uint32_t tokenize(char *text, int length)
{
    static const char alphabet[] = "0123456789abcdefxyz+-*/() \t";
    for (int i = 0; i < length; i++)
        text[i] = alphabet[next_random() % (sizeof alphabet - 1)];
    enum state state = START;
    uint32_t numbers = 0, names = 0, operators = 0, value = 0, hash = 0;
    for (int i = 0; i < length; i++) {
        char c = text[i];
        switch (c) {
        case '0': case '1': case '2': case '3': case '4':
        case '5': case '6': case '7': case '8': case '9':
            if (state == NAME) {
                hash = hash * 33 + (uint32_t)c;
            } else {
                if (state != NUMBER)
                    value = 0;
                value = value * 10 + (uint32_t)(c - '0');
                state = NUMBER;
            }
            break;
        case '+': case '-': case '*': case '/': case '(': case ')':
            if (state == NUMBER)
                numbers += value;
            else if (state == NAME)
                names ^= hash;
            operators++;
            state = OPERATOR;
            break;
        case ' ': case '\t':
            if (state == NUMBER)
                numbers += value;
            else if (state == NAME)
                names ^= hash;
            state = SPACE;
            break;
        default:
            if (state != NAME)
                hash = 5381;
            hash = hash * 33 + (uint32_t)c;
            state = NAME;
            break;
        }
    }
    return numbers * 7 + names * 3 + operators;
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 4;
    enum { COUNT = 1500, TEXT = 6000 };
    struct node *pool = malloc(COUNT * sizeof *pool);
    char *text = malloc(TEXT);
    if (!pool || !text) {
        printf("mixed: out of memory\n");
        return 1;
    }
    uint32_t l = 0, m = 0, t = 0;
    for (int r = 0; r < rounds; r++) {
        l ^= lists(pool, COUNT);
        m ^= matrix();
        t ^= tokenize(text, TEXT);
    }
    printf("mixed: %d rounds, lists 0x%08x, matrix 0x%08x, tokens 0x%08x\n",
           rounds, (unsigned)l, (unsigned)m, (unsigned)t);
    return 0;
}
