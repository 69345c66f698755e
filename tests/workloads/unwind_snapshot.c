/* A "core dump" of its own stack, for unwinding tests without BPF.
 * Usage: unwind_snapshot OUT_FILE MODE   (MODE: qsort or signal)
 * main -> snap_a -> snap_b -> (qsort -> snap_compare | raise -> snap_handler) -> snap_take:
 * snap_take writes "ip sp bp" (hex) and the stack bytes from sp to the top of the stack,
 * prints "ready" and waits for stdin to close. Built -O2 -fomit-frame-pointer: only CFI
 * can unwind it. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "snapshot.h"

static const char *out_path;
static int taken;

__attribute__((noinline)) void snap_take(void) {
    unsigned long ip, sp, bp;
    TAKE_REGISTERS(ip, sp, bp);
    if (taken++)
        return;
    write_snapshot(out_path, ip, sp, bp);
    __asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) int snap_compare(const void *a, const void *b) {
    snap_take();
    return *(const int *)a - *(const int *)b;
}

__attribute__((noinline)) void snap_handler(int sig) {
    (void)sig;
    snap_take();
    __asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) void snap_b(int use_signal) {
    if (use_signal) {
        signal(SIGUSR1, snap_handler);
        raise(SIGUSR1);
    } else {
        int values[64];
        for (int i = 0; i < 64; i++)
            values[i] = (i * 37) % 64;
        qsort(values, 64, sizeof values[0], snap_compare);
    }
    __asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) void snap_a(int use_signal) {
    snap_b(use_signal);
    __asm__ volatile("" ::: "memory");
}

int main(int argc, char **argv) {
    char line[16];
    if (argc < 3)
        return 2;
    out_path = argv[1];
    snap_a(strcmp(argv[2], "signal") == 0);
    printf("ready\n");
    fflush(stdout);
    while (fgets(line, sizeof line, stdin))
        ;
    return 0;
}
