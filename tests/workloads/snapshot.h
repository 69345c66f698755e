/* A "core dump" of a program's own stack, for unwinding tests without BPF: the
 * registers, a newline, then the bytes from sp to the end of the mapping holding sp.
 * Shared by unwind_snapshot.c and unwind_expr.c. */
#pragma once

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The current rip, rsp and rbp (rip: the instruction after this one). */
#define TAKE_REGISTERS(ip, sp, bp)                                                           \
    __asm__ volatile("lea 0(%%rip), %0\n\tmov %%rsp, %1\n\tmov %%rbp, %2"                   \
                     : "=r"(ip), "=r"(sp), "=r"(bp))

static unsigned long mapping_end(unsigned long sp) {
    FILE *maps = fopen("/proc/self/maps", "r");
    char line[512];
    unsigned long start, end, top = 0;
    while (maps && fgets(line, sizeof line, maps))
        if (sscanf(line, "%lx-%lx", &start, &end) == 2 && start <= sp && sp < end)
            top = end;
    if (maps)
        fclose(maps);
    return top;
}

/* Writes "ip sp bp" (hex) and the stack above sp to path. Not async-signal-safe: called
 * once, from a test program. */
static __attribute__((noinline)) void write_snapshot(const char *path, unsigned long ip,
                                                     unsigned long sp, unsigned long bp) {
    size_t size = mapping_end(sp) - sp;
    unsigned char *copy = malloc(size);
    memcpy(copy, (void *)sp, size); /* first: the calls below reuse the stack under sp */
    FILE *out = fopen(path, "wb");
    fprintf(out, "%lx %lx %lx\n", ip, sp, bp);
    fwrite(copy, 1, size, out);
    fclose(out);
    free(copy);
}
