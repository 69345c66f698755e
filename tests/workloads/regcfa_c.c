/* A hot leaf in assembly whose CFA lives in R11 while it runs, built without frame
 * pointers: main -> reg_outer -> reg_leaf. reg_leaf saves RSP in R11 and realigns RSP,
 * so only the sampled R11 (not RSP, not RBP) says where its return address is, as in
 * OpenSSL's hand-written assembly.
 * With "nostack", reg_outer calls nostack_leaf instead, which points RSP at an unmapped
 * page while it spins (as code switching stacks does for an instant), its CFA in R11.
 * With "badstack", badstack_leaf does the same without saying so in its CFI (the CFA
 * stays RSP + 8): its return address cannot be read.
 * Usage: regcfa_c [nostack|badstack] [seconds]   (no seconds: forever)
 * Prints "ready", then spins. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void reg_leaf(long n);
void nostack_leaf(long n);
void badstack_leaf(long n);

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
        ".size reg_leaf, .-reg_leaf\n"
        ".globl nostack_leaf\n"
        ".type nostack_leaf, @function\n"
        "nostack_leaf:\n"
        ".cfi_startproc\n"
        "    mov %rsp, %r11\n"
        ".cfi_def_cfa_register %r11\n"
        "    mov $0x1000, %rsp\n" /* below mmap_min_addr: never mapped */
        "1:  dec %rdi\n"
        "    jnz 1b\n"
        "    mov %r11, %rsp\n"
        ".cfi_def_cfa_register %rsp\n"
        "    ret\n"
        ".cfi_endproc\n"
        ".size nostack_leaf, .-nostack_leaf\n"
        ".globl badstack_leaf\n"
        ".type badstack_leaf, @function\n"
        "badstack_leaf:\n"
        ".cfi_startproc\n"
        "    mov %rsp, %r11\n"
        "    mov $0x1000, %rsp\n"
        "1:  dec %rdi\n"
        "    jnz 1b\n"
        "    mov %r11, %rsp\n"
        "    ret\n"
        ".cfi_endproc\n"
        ".size badstack_leaf, .-badstack_leaf\n");

volatile long reg_rounds;
static int no_stack, bad_stack;

__attribute__((noinline)) void reg_outer(void) {
    if (no_stack)
        nostack_leaf(1000000);
    else if (bad_stack)
        badstack_leaf(1000000);
    else
        reg_leaf(1000000);
    reg_rounds++; /* work after the call: no tail call */
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    no_stack = argc > 1 && strcmp(argv[1], "nostack") == 0;
    bad_stack = argc > 1 && strcmp(argv[1], "badstack") == 0;
    int mode = no_stack || bad_stack;
    double seconds = argc > 1 + mode ? atof(argv[1 + mode]) : 0.0;
    double deadline = now_seconds() + seconds;
    printf("ready\n");
    fflush(stdout);
    while (seconds <= 0.0 || now_seconds() < deadline)
        reg_outer();
    return 0;
}
