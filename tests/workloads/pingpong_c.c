/* Two threads pass a byte back and forth through pipes: every round trip is two
 * context switches out (a blocking read each). Built without frame pointers by
 * bench/bench_unwind.py. Usage: pingpong SECONDS; prints "round_trips N". */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static int ping[2], pong[2];
static volatile int stop;

__attribute__((noinline)) static void pass(int in, int out) {
    char byte;
    if (read(in, &byte, 1) == 1 && write(out, &byte, 1) == 1)
        __asm__ volatile("" ::: "memory");
}

static void *echo(void *arg) {
    (void)arg;
    while (!stop)
        pass(ping[0], pong[1]);
    return NULL;
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 5.0;
    if (pipe(ping) || pipe(pong))
        return 1;
    pthread_t thread;
    pthread_create(&thread, NULL, echo, NULL);
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    long trips = 0;
    char byte = 'x';
    for (;;) {
        if (write(ping[1], &byte, 1) != 1 || read(pong[0], &byte, 1) != 1)
            return 1;
        trips++;
        if ((trips & 1023) == 0) {
            clock_gettime(CLOCK_MONOTONIC, &now);
            if (now.tv_sec - start.tv_sec + (now.tv_nsec - start.tv_nsec) / 1e9 >= seconds)
                break;
        }
    }
    stop = 1;
    if (write(ping[1], &byte, 1) != 1)
        return 1;
    pthread_join(thread, NULL);
    printf("round_trips %ld\n", trips);
    return 0;
}
