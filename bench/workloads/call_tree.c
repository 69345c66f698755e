/* Walks every path of a 14-level binary call tree, spinning briefly at each
 * leaf: 16384 distinct call stacks, all of them hot in turn. */
#include <stdio.h>

#define NOINLINE __attribute__((noinline))
static volatile unsigned long sink;

NOINLINE static void leaf(void)
{
    for (int i = 0; i < 20000; i++)
        sink = sink * 6364136223846793005UL + 1442695040888963407UL;
}

#define LEVEL(n, next)                                                         \
    NOINLINE static void n##_a(unsigned path) { next(path); sink++; }         \
    NOINLINE static void n##_b(unsigned path) { next(path); sink += 2; }      \
    NOINLINE static void n(unsigned path, int bit)                             \
    {                                                                          \
        if (path >> bit & 1) n##_b(path); else n##_a(path);                    \
    }

static void l13_next(unsigned path) { (void)path; leaf(); }
LEVEL(l13, l13_next)
#define NEXT(cur, nxt, bit) static void cur##_next(unsigned p) { nxt(p, bit); }
NEXT(l12, l13, 13) LEVEL(l12, l12_next)
NEXT(l11, l12, 12) LEVEL(l11, l11_next)
NEXT(l10, l11, 11) LEVEL(l10, l10_next)
NEXT(l9, l10, 10) LEVEL(l9, l9_next)
NEXT(l8, l9, 9) LEVEL(l8, l8_next)
NEXT(l7, l8, 8) LEVEL(l7, l7_next)
NEXT(l6, l7, 7) LEVEL(l6, l6_next)
NEXT(l5, l6, 6) LEVEL(l5, l5_next)
NEXT(l4, l5, 5) LEVEL(l4, l4_next)
NEXT(l3, l4, 4) LEVEL(l3, l3_next)
NEXT(l2, l3, 3) LEVEL(l2, l2_next)
NEXT(l1, l2, 2) LEVEL(l1, l1_next)
NEXT(l0, l1, 1) LEVEL(l0, l0_next)

int main(void)
{
    printf("ready\n");
    fflush(stdout);
    for (unsigned path = 0;; path = (path + 1) & 0x3fff)
        l0(path, 0);
}
