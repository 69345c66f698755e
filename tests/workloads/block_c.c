/* Off-CPU workload: main -> block_loop -> block_sleep -> nanosleep.
 * Usage: block_c [iterations=300] [milliseconds=10]
 * Prints "ready", waits for one line on stdin (the "go" signal), sleeps
 * iterations x milliseconds, then prints "done <iterations>", then "queued <ns>": how long
 * it waited on a run queue meanwhile (woken, not yet running: off-CPU time too, which a
 * loaded machine adds to the sleeps), and exits 0. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* Nanoseconds this thread has waited on a run queue (/proc/self/schedstat, field 2). */
static unsigned long long run_queue_wait(void) {
    unsigned long long running = 0, waiting = 0;
    FILE *f = fopen("/proc/thread-self/schedstat", "r");
    if (f) {
        if (fscanf(f, "%llu %llu", &running, &waiting) != 2)
            waiting = 0;
        fclose(f);
    }
    return waiting;
}

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
    unsigned long long queued = run_queue_wait();
    block_loop(iterations, milliseconds);
    queued = run_queue_wait() - queued;
    printf("done %ld\nqueued %llu\n", iterations, queued);
    fflush(stdout);
    return 0;
}
