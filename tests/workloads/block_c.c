/* Off-CPU workload: main -> block_loop -> block_sleep -> nanosleep.
 * Usage: block_c [iterations=300] [milliseconds=10]
 * Prints "ready", waits for one line on stdin (the "go" signal), sleeps
 * iterations x milliseconds, then prints "done <iterations>" and exits 0. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

volatile int block_sleep_failures;

__attribute__((noinline)) void block_sleep(long milliseconds) {
    struct timespec ts = {milliseconds / 1000, (milliseconds % 1000) * 1000000L};
    if (nanosleep(&ts, NULL) != 0) /* work after the call: no tail call */
        block_sleep_failures++;
}

__attribute__((noinline)) void block_loop(long iterations, long milliseconds) {
    for (long i = 0; i < iterations; i++)
        block_sleep(milliseconds);
    __asm__ volatile("" ::: "memory");
}

int main(int argc, char **argv) {
    long iterations = argc > 1 ? atol(argv[1]) : 300;
    long milliseconds = argc > 2 ? atol(argv[2]) : 10;
    char line[64];
    printf("ready\n");
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin))
        return 1;
    block_loop(iterations, milliseconds);
    printf("done %ld\n", iterations);
    fflush(stdout);
    return 0;
}
