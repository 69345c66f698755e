/* A three-level call chain into libc, built without frame pointers (-O2 -fomit-frame-pointer):
 * on-CPU:  main -> chain_a -> chain_b -> qsort (libc) -> chain_compare
 * off-CPU: main -> chain_a -> chain_b -> nanosleep (libc)
 * deep:    main -> deep_recurse x DEPTH -> chain_a -> chain_b -> qsort -> chain_compare
 * Usage: chain_c cpu [seconds]        (no seconds: forever)
 *        chain_c sleep [iterations=200] [milliseconds=2]
 *        chain_c deep DEPTH           (on-CPU, forever)
 * Prints "ready"; in sleep mode waits for one line on stdin, sleeps, prints "done N". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int values[4096];
volatile int chain_sink;

__attribute__((noinline)) int chain_compare(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

__attribute__((noinline)) void chain_b(int sleep_ms) {
    if (sleep_ms) {
        struct timespec ts = {sleep_ms / 1000, (sleep_ms % 1000) * 1000000L};
        if (nanosleep(&ts, NULL) != 0)
            chain_sink++;
    } else {
        for (int i = 0; i < 4096; i++)
            values[i] = (i * 7919) % 4099;
        qsort(values, 4096, sizeof values[0], chain_compare);
        chain_sink += values[17];
    }
    __asm__ volatile("" ::: "memory"); /* work after the call: no tail call */
}

__attribute__((noinline)) void chain_a(int sleep_ms) {
    chain_b(sleep_ms);
    __asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) void deep_recurse(int depth) {
    if (depth > 0)
        deep_recurse(depth - 1);
    else
        for (;;)
            chain_a(0);
    __asm__ volatile("" ::: "memory"); /* no tail call: one frame per level */
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc > 2 && strcmp(argv[1], "deep") == 0) {
        printf("ready\n");
        fflush(stdout);
        deep_recurse(atoi(argv[2]));
    }
    int sleeping = argc > 1 && strcmp(argv[1], "sleep") == 0;
    if (sleeping) {
        long iterations = argc > 2 ? atol(argv[2]) : 200;
        int milliseconds = argc > 3 ? atoi(argv[3]) : 2;
        char line[64];
        printf("ready\n");
        fflush(stdout);
        if (!fgets(line, sizeof line, stdin))
            return 1;
        for (long i = 0; i < iterations; i++)
            chain_a(milliseconds);
        printf("done %ld\n", iterations);
        fflush(stdout);
        return 0;
    }
    double seconds = argc > 2 ? atof(argv[2]) : 0.0;
    double deadline = now_seconds() + seconds;
    printf("ready\n");
    fflush(stdout);
    while (seconds <= 0.0 || now_seconds() < deadline)
        chain_a(0);
    return 0;
}
