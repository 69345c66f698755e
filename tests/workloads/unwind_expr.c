/* Stack snapshots ("core dumps" of its own stack) where unwinding needs DWARF expressions
 * or meets an alternate signal stack. Built -O2 -fomit-frame-pointer.
 * Usage: unwind_expr OUT_FILE MODE
 *   drap:      main -> expr_outer -> drap_frame -> expr_take. drap_frame realigns its stack
 *              through a DRAP register (stack arguments + alloca + a 64-byte aligned local),
 *              so gcc describes its CFA as DW_OP_breg6 -8; DW_OP_deref and its saved RBP
 *              as DW_CFA_expression DW_OP_breg6 0.
 *   drap_leaf: the registers are taken inside drap_frame itself.
 *   altstack:  main burns CPU in alt_spin; SIGALRM (setitimer) runs alt_handler on a
 *              sigaltstack (SA_ONSTACK); it burns CPU in alt_burn, which takes the snapshot.
 * The snapshot is "ip sp bp" (hex), a newline, then the bytes from sp to the end of the
 * mapping holding sp. Then it prints "ready" and waits for stdin to close.
 * drap_block and altstack_block: the same paths, but instead of a snapshot expr_take
 * prints "ready" and blocks reading stdin there (for the kernel's own walk). */
#include <alloca.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <unistd.h>

#include "snapshot.h"

#define ALT_STACK_SIZE (64 * 1024)

static const char *out_path;
static volatile int taken, blocking;
static volatile unsigned long spin_count;

/* Only async-signal-unsafe calls after the registers are taken, once, in a test program. */
__attribute__((noinline)) void expr_write(unsigned long ip, unsigned long sp, unsigned long bp) {
    write_snapshot(out_path, ip, sp, bp);
    taken = 1;
}

/* Blocks until stdin closes, inside the caller's frames (read is async-signal-safe). */
__attribute__((noinline)) void expr_wait(void) {
    char buffer[16];
    taken = 1;
    if (write(1, "ready\n", 6) != 6)
        exit(4);
    while (read(0, buffer, sizeof buffer) > 0)
        ;
    __asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) void expr_take(void) {
    unsigned long ip, sp, bp;
    TAKE_REGISTERS(ip, sp, bp);
    if (taken)
        return;
    if (blocking) {
        expr_wait();
        return;
    }
    expr_write(ip, sp, bp);
    __asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) int drap_frame(int a, int b, int c, int d, int e, int f, int g, int h,
                                         int leaf) {
    char aligned[256] __attribute__((aligned(64)));
    char *extra = alloca(a + 16);
    memset(aligned, b + g + h, sizeof aligned);
    memset(extra, c, a + 16);
    if (leaf) {
        unsigned long ip, sp, bp;
        TAKE_REGISTERS(ip, sp, bp);
        expr_write(ip, sp, bp);
    } else {
        expr_take();
    }
    __asm__ volatile("" : : "r"(aligned), "r"(extra) : "memory");
    return aligned[d & 255] + extra[e & 15] + f;
}

__attribute__((noinline)) void expr_outer(int leaf) {
    drap_frame(32, 1, 2, 3, 4, 5, 6, 7, leaf);
    __asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) void alt_burn(void) {
    for (unsigned long i = 0; i < 2000000; i++)
        spin_count += i;
    expr_take();
    __asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) void alt_handler(int sig) {
    (void)sig;
    if (!taken)
        alt_burn();
    __asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) void alt_spin(void) {
    while (!taken)
        spin_count++;
    __asm__ volatile("" ::: "memory");
}

static void run_on_altstack(void) {
    stack_t alt = {0};
    alt.ss_sp = mmap(NULL, ALT_STACK_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                     -1, 0);
    alt.ss_size = ALT_STACK_SIZE;
    if (alt.ss_sp == MAP_FAILED || sigaltstack(&alt, NULL) != 0)
        exit(3);
    struct sigaction action = {0};
    action.sa_handler = alt_handler;
    action.sa_flags = SA_ONSTACK | SA_RESTART;
    sigemptyset(&action.sa_mask);
    sigaction(SIGALRM, &action, NULL);
    struct itimerval timer = {{0, 20000}, {0, 20000}};
    setitimer(ITIMER_REAL, &timer, NULL);
    alt_spin();
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
}

int main(int argc, char **argv) {
    char line[16];
    if (argc < 3)
        return 2;
    out_path = argv[1];
    blocking = strstr(argv[2], "_block") != NULL;
    if (strncmp(argv[2], "altstack", 8) == 0)
        run_on_altstack();
    else
        expr_outer(strcmp(argv[2], "drap_leaf") == 0);
    if (blocking)
        return 0;
    printf("ready\n");
    fflush(stdout);
    while (fgets(line, sizeof line, stdin))
        ;
    return 0;
}
