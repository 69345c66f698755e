/* A hot leaf in assembly whose CFA lives in R11 while it runs, built without frame
 * pointers: main -> reg_outer -> reg_leaf. reg_leaf saves RSP in R11 and realigns RSP,
 * so only the sampled R11 (not RSP, not RBP) says where its return address is, as in
 * OpenSSL's hand-written assembly. Usage: regcfa_c [seconds]   (none: forever)
 * Prints "ready", then spins. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

void reg_leaf(long n);

__asm__(".text\n"
        ".globl reg_leaf\n"
        ".type reg_leaf, @function\n"
        "reg_leaf:\n"
        ".cfi_startproc\n"
        "    mov %rsp, %r11\n"
        ".cfi_def_cfa_register %r11\n"
        "    and $-64, %rsp\n"
        "    sub $64, %rsp\n"
        "1:  dec %rdi\n"
        "    jnz 1b\n"
        "    mov %r11, %rsp\n"
        ".cfi_def_cfa_register %rsp\n"
        "    ret\n"
        ".cfi_endproc\n"
        ".size reg_leaf, .-reg_leaf\n");

volatile long reg_rounds;

__attribute__((noinline)) void reg_outer(void) {
    reg_leaf(1000000);
    reg_rounds++; /* work after the call: no tail call */
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
        reg_outer();
    return 0;
}
