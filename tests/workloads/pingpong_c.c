/* Two threads pass a byte back and forth through pipes: every pass is a context switch
 * out (a blocking read) when both run on one CPU. Built without frame pointers.
 * Usage: pingpong_c               prints "ready", then per line on stdin:
 *          "go SECONDS"  passes for SECONDS, prints "round_trips N", blocks again
 *          "warm"        a few passes, prints "warm"
 *          "exit"        exits
 *        pingpong_c SECONDS       passes for SECONDS, prints "round_trips N", exits */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int ping[2], pong[2];

__attribute__((noinline)) static void pass(int in, int out) {
    char byte;
    if (read(in, &byte, 1) == 1 && write(out, &byte, 1) == 1)
        __asm__ volatile("" ::: "memory");
}

static void *echo(void *arg) {
    (void)arg;
    for (;;)
        pass(ping[0], pong[1]);
    return NULL;
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

__attribute__((noinline)) static long rally(double seconds, long at_most) {
    double deadline = now_seconds() + seconds;
    long trips = 0;
    char byte = 'x';
    for (;;) {
        if (write(ping[1], &byte, 1) != 1 || read(pong[0], &byte, 1) != 1)
            exit(1);
        trips++;
        if (trips >= at_most || ((trips & 1023) == 0 && now_seconds() >= deadline))
            return trips;
    }
}

int main(int argc, char **argv) {
    if (pipe(ping) || pipe(pong))
        return 1;
    pthread_t thread;
    pthread_create(&thread, NULL, echo, NULL);
    if (argc > 1) {
        printf("round_trips %ld\n", rally(atof(argv[1]), -1UL >> 1));
        return 0;
    }
    printf("ready\n");
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "go ", 3) == 0)
            printf("round_trips %ld\n", rally(atof(line + 3), -1UL >> 1));
        else if (strncmp(line, "warm", 4) == 0)
            printf("warm %ld\n", rally(1.0, 10));
        else
            break;
        fflush(stdout);
    }
    return 0;
}
