/* On-CPU workload: main -> c_outer -> c_hot_spin (the hot leaf).
 * Usage: hot_c [seconds]  (no argument: run forever). Prints "ready" once started. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

unsigned long c_seed = 1;

/* The accumulator is a volatile stack local: every iteration loads and stores it, so the
 * loop cannot be folded away, and the stack use makes gcc emit the frame-pointer prologue
 * (gcc 12 omits it in leaf functions that never touch the stack, despite
 * -mno-omit-leaf-frame-pointer). */
__attribute__((noinline)) void c_hot_spin(void) {
    volatile unsigned long x = c_seed;
    for (int i = 0; i < 1000000; i++)
        x = x * 6364136223846793005UL + 1442695040888963407UL;
    c_seed = x;
}

__attribute__((noinline)) void c_outer(void) {
    c_hot_spin();
    __asm__ volatile("" ::: "memory"); /* keep c_outer a real frame (no tail call) */
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 0.0;
    double deadline = now_seconds() + seconds;
    printf("ready\n");
    fflush(stdout);
    while (seconds <= 0.0 || now_seconds() < deadline)
        c_outer();
    return 0;
}
