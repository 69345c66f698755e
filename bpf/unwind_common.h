/* Shared by the .eh_frame-unwinding programs (oncpu_dwarf.c, offcpu_dwarf.c).
 *
 * Frame-pointer stacks cannot be walked in the kernel through code built
 * without frame pointers, so these programs send user space what it needs to
 * unwind with the files' CFI: the user RIP/RSP/RBP, a copy of the user stack
 * from RSP upward (STACK_BYTES at most), and the kernel stack (bpf_get_stack:
 * the kernel keeps frame pointers). Stack copies are unique, so samples are
 * not aggregated here: each one goes to user space through the "samples" BPF
 * ring buffer; a full ring buffer is counted (STAT_RINGBUF_DROPS), never silent.
 *
 * The stack is copied page by page: bpf_probe_read_user fails as a whole when
 * any byte faults, so a copy of one large block would be lost near the top of
 * the stack (the main thread's environment). The copy stops at the first page
 * that cannot be read. A sample is built in a per-CPU scratch slot (an array
 * indexed by CPU: per-CPU maps cap values at 32 KiB) and copied into the ring
 * buffer with only the bytes used.
 *
 * -D flags set by the loader: MAX_PIDS, MAX_CPUS, STACK_BYTES, RINGBUF_PAGES,
 * MAX_THREADS.
 */
#pragma once

#include <uapi/linux/ptrace.h>
#include <linux/sched.h>

#define PAGE_BYTES 4096
#define KSTACK_DEPTH 127
#define USER_REGS 17

enum sample_kind {
    SAMPLE_ON_CPU = 1,     /* a CPU-clock sample */
    SAMPLE_SWITCH_OUT = 2, /* off-CPU: a thread left the CPU (stacks, pending) */
    SAMPLE_SWITCH_IN = 3,  /* off-CPU: it came back (completion, no stacks) */
    SAMPLE_SWITCH_OUT_REPEAT = 4, /* off-CPU: a switch-out that unwinds like memo_id did */
};

enum sample_flag {
    FLAG_STACK_FAILED = 1, /* not even the first page above RSP was readable */
    FLAG_NO_USER_REGS = 2, /* the user registers could not be read */
};

struct sample_header {
    u32 kind;
    u32 tgid;
    u32 tid;
    u32 flags;
    u64 ip;
    u64 sp;
    u64 bp;
    u64 seq;           /* off-CPU: switch-out time, pairs the two records of one switch */
    u64 memo_id;       /* SWITCH_OUT_REPEAT: the memo whose stack this one has (offcpu_dwarf.c) */
    u32 kstack_bytes;  /* valid bytes of kstack */
    u32 stack_bytes;   /* bytes of user stack following the header */
    u64 regs[USER_REGS]; /* the user general registers and RIP, by DWARF number */
    u64 kstack[KSTACK_DEPTH];
};

struct sample {
    struct sample_header h;
    /* A page of slack lets the verifier prove every page-sized read stays inside. */
    u8 stack[STACK_BYTES + PAGE_BYTES];
};

struct switch_in {
    u32 kind;
    u32 tgid;
    u32 tid;
    u32 pad;
    u64 seq;
    u64 ns; /* time away from the CPU */
};

enum unwind_stat {
    STAT_EVENTS = 0,       /* samples (on-CPU) or completed switches (off-CPU) */
    STAT_RINGBUF_DROPS,    /* records lost: the ring buffer was full */
    STAT_STACK_FAILED,     /* user stack not copied (the leaf pc alone is sent) */
    STAT_NO_USER_REGS,     /* user registers not readable */
    STAT_KSTACK_ERROR,     /* kernel stack not captured */
    STAT_START_FULL,       /* off-CPU: switch-out not recorded, start map full */
    STAT_NO_SCRATCH,       /* should never happen: no scratch slot for this CPU */
    STAT_COUNTS_FULL,      /* off-CPU repeat not counted: counts map full */
    STAT_NO_ACTIVE_MAP,    /* should never happen: map-in-map slot empty */
    STAT_COUNT
};

#include "pid_filter.h"
BPF_ARRAY(scratch, struct sample, MAX_CPUS);
BPF_RINGBUF_OUTPUT(samples, RINGBUF_PAGES);


static __always_inline struct sample *scratch_slot(void)
{
    u32 cpu = bpf_get_smp_processor_id();
    struct sample *s = scratch.lookup(&cpu);
    if (!s)
        stat_add(STAT_NO_SCRATCH);
    return s;
}

/* The user registers saved on the last kernel entry: a system call (off-CPU), or the
 * interrupt that took an on-CPU sample in user mode. In DWARF order (rax, rdx, rcx, rbx,
 * rsi, rdi, rbp, rsp, r8-r15, rip): a frame's CFA may be at any of them. */
static __always_inline int saved_user_regs(struct sample_header *h)
{
    struct task_struct *task = bpf_get_current_task_btf();
    struct pt_regs *saved = (struct pt_regs *)bpf_task_pt_regs(task);
    struct pt_regs regs = {};
    if (!saved || bpf_probe_read_kernel(&regs, sizeof(regs), saved) != 0)
        return -1;
    h->ip = regs.ip;
    h->sp = regs.sp;
    h->bp = regs.bp;
    h->regs[0] = regs.ax;
    h->regs[1] = regs.dx;
    h->regs[2] = regs.cx;
    h->regs[3] = regs.bx;
    h->regs[4] = regs.si;
    h->regs[5] = regs.di;
    h->regs[6] = regs.bp;
    h->regs[7] = regs.sp;
    h->regs[8] = regs.r8;
    h->regs[9] = regs.r9;
    h->regs[10] = regs.r10;
    h->regs[11] = regs.r11;
    h->regs[12] = regs.r12;
    h->regs[13] = regs.r13;
    h->regs[14] = regs.r14;
    h->regs[15] = regs.r15;
    h->regs[16] = regs.ip;
    return 0;
}

static __always_inline void capture_kernel_stack(void *ctx, struct sample_header *h)
{
    long n = bpf_get_stack(ctx, h->kstack, sizeof(h->kstack), 0);
    if (n < 0) {
        if (n != -EFAULT)
            stat_add(STAT_KSTACK_ERROR);
        n = 0;
    }
    h->kstack_bytes = n;
}

/* Copy the user stack from h->sp upward, a page at a time, into s->stack. */
static __always_inline void copy_user_stack(struct sample *s)
{
    u64 sp = s->h.sp;
    u32 first = PAGE_BYTES - (sp & (PAGE_BYTES - 1));
    if (first > STACK_BYTES)
        first = STACK_BYTES;
    s->h.stack_bytes = 0;
    if (bpf_probe_read_user(s->stack, first, (void *)sp) != 0) {
        s->h.flags |= FLAG_STACK_FAILED;
        stat_add(STAT_STACK_FAILED);
        return;
    }
    u32 copied = first;
#pragma unroll
    for (int i = 0; i < STACK_BYTES / PAGE_BYTES; i++) {
        if (copied >= STACK_BYTES)
            break;
        u32 n = STACK_BYTES - copied;
        if (n > PAGE_BYTES)
            n = PAGE_BYTES;
        if (bpf_probe_read_user(s->stack + copied, n, (void *)(sp + copied)) != 0)
            break;
        copied += n;
    }
    s->h.stack_bytes = copied;
}

/* Send the header and the copied bytes; 0 on success. */
static __always_inline int send_sample(struct sample *s)
{
    u64 size = sizeof(struct sample_header) + s->h.stack_bytes;
    if (size > sizeof(struct sample_header) + STACK_BYTES)
        size = sizeof(struct sample_header) + STACK_BYTES;
    if (samples.ringbuf_output(s, size, 0) != 0) {
        stat_add(STAT_RINGBUF_DROPS);
        return -1;
    }
    return 0;
}
