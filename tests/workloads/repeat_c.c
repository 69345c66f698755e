/* Two call paths that block with identical registers, built without frame pointers:
 *   main -> left_a -> left_b -> wait_leaf -> nanosleep (libc)
 *   main -> right_a -> right_b -> wait_leaf -> nanosleep (libc)
 * The twins have the same frame sizes, so nanosleep is entered with the same RIP, RSP
 * and RBP on both paths; only the return addresses on the stack differ. Off-CPU
 * repeat detection (bpf/offcpu_dwarf.c) must tell them apart by those words.
 * Usage: repeat_c [iterations=400] [run=4] [milliseconds=1]
 * Prints "ready", waits for a line on stdin, then alternates paths every `run`
 * iterations (left first) and prints "done N". */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

volatile long left_count, right_count, sink;

__attribute__((noinline)) void wait_leaf(int ms) {
    struct timespec ts = {0, ms * 1000000L};
    if (nanosleep(&ts, NULL) != 0)
        sink++;
    __asm__ volatile("" ::: "memory"); /* work after the call: no tail call */
}

/* Different bodies (each counts its own calls): the compiler cannot fold the twins. */
__attribute__((noinline)) void left_b(int ms) {
    wait_leaf(ms);
    left_count++;
}

__attribute__((noinline)) void right_b(int ms) {
    wait_leaf(ms);
    right_count++;
}

__attribute__((noinline)) void left_a(int ms) {
    left_b(ms);
    left_count += 2;
}

__attribute__((noinline)) void right_a(int ms) {
    right_b(ms);
    right_count += 2;
}

int main(int argc, char **argv) {
    long iterations = argc > 1 ? atol(argv[1]) : 400;
    long run = argc > 2 ? atol(argv[2]) : 4;
    int milliseconds = argc > 3 ? atoi(argv[3]) : 1;
    char line[64];
    printf("ready\n");
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin))
        return 1;
    for (long i = 0; i < iterations; i++) {
        if ((i / run) % 2)
            right_a(milliseconds);
        else
            left_a(milliseconds);
    }
    printf("done %ld\n", iterations);
    fflush(stdout);
    return 0;
}
