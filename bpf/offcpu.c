/* Off-CPU profiling on the sched:sched_switch tracepoint (no kprobes needed).
 *
 * The tracepoint runs in the context of the thread leaving the CPU, so its
 * stacks are captured there (the user stack walked by frame pointers or by CFI as
 * the process's setting says: profile_common.h, cfi_walk.h) and kept per thread in
 * "start". When the thread is switched back in, one switch and the nanoseconds it
 * was away are added to (tgid, user stack, kernel stack). The switch-in of the
 * next thread is handled first: the walk of the leaving thread ends the program
 * with a tail call. */
#include "profile_common.h"
#include "cfi_walk.h"

#define EXITING_STATES 0x30 /* EXIT_DEAD | EXIT_ZOMBIE, as sched_switch reports them */

struct start_rec {
    u64 ts;
    u64 user_hash;
    u32 tgid;
    s32 user_stack_id;
    s32 kernel_stack_id;
    u32 pad;
};

BPF_HASH(start, u32, struct start_rec, MAX_THREADS);
#define OFFCPU_KEY struct stack_key
#include "offcpu_counts.h"

static __always_inline void count_switch(struct start_rec *rec, u64 ns)
{
    struct stack_key key = {
        .tgid = rec->tgid,
        .kernel_stack_id = rec->kernel_stack_id,
        .user_stack_id = rec->user_stack_id,
        .user_hash = rec->user_hash,
    };
    stat_add(STAT_EVENTS);
    add_blocked(&key, ns);
}

static __always_inline void switched_out(u32 tid, struct start_rec *rec)
{
    /* A record still there means the thread came back without this program seeing it
     * (a few in a million switches): that switch is counted all the same, its time
     * away unknown. */
    struct start_rec *earlier = start.lookup(&tid);
    if (earlier) {
        stat_add(STAT_SWITCH_IN_UNSEEN);
        count_switch(earlier, 0);
    }
    if (start.update(&tid, rec) != 0)
        stat_add(STAT_START_FULL);
}

static __always_inline void record_walked(struct walk_state *w)
{
    struct start_rec rec = {
        .ts = w->ts,
        .tgid = w->tgid,
        .user_stack_id = -EFAULT,
        .kernel_stack_id = w->kstack_id,
    };
    rec.user_hash = store_user_stack(w);
    switched_out(w->tid, &rec);
}

/* The tail-called walk: a few more frames, then itself again or the record. */
int off_cpu_walk(void *ctx)
{
    u32 zero = 0;
    struct walk_state *w = walk_states.lookup(&zero);
    if (!w)
        return 0;
    walk_some(ctx, w);
    record_walked(w);
    return 0;
}

/* The thread coming back: count its switch (unless its window is over). */
static __always_inline void switched_in(u32 tid, u64 now)
{
    struct start_rec *rec = start.lookup(&tid);
    if (!rec)
        return;
    struct start_rec done = *rec;
    start.delete(&tid);
    struct pid_setting *setting = profiled(done.tgid);
    if (setting && past_deadline(setting, now))
        return;
    count_switch(&done, now > done.ts ? now - done.ts : 0);
}

TRACEPOINT_PROBE(sched, sched_switch)
{
    u64 now = bpf_ktime_get_ns();
    switched_in(args->next_pid, now);

    u32 prev_tid = args->prev_pid;
    u32 tgid = bpf_get_current_pid_tgid() >> 32; /* current is still prev */
    /* A thread's last switch-out, as it exits (prev_state shows EXIT_ZOMBIE or
     * EXIT_DEAD): it never comes back, and its memory is already gone. */
    if (prev_tid == 0 || (args->prev_state & EXITING_STATES))
        return 0;
    struct pid_setting *setting = profiled(tgid);
    if (!setting || past_deadline(setting, now))
        return 0;
    if (setting->mode != MODE_CFI) {
        struct start_rec rec = {.ts = now, .tgid = tgid};
        rec.user_stack_id = fp_user_stack(args);
        rec.kernel_stack_id = kernel_stack(args);
        switched_out(prev_tid, &rec);
        return 0;
    }
    struct walk_state *w = walk_begin(tgid, prev_tid);
    if (!w) {
        struct start_rec rec = {.ts = now, .tgid = tgid, .user_stack_id = -EFAULT};
        rec.kernel_stack_id = kernel_stack(args);
        switched_out(prev_tid, &rec);
        return 0;
    }
    w->ts = now;
    w->kstack_id = kernel_stack(args);
    if (user_regs(w, 0) == 0)
        walk_start(args, w);
    record_walked(w);
    return 0;
}
