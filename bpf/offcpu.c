/* Off-CPU profiling on the sched:sched_switch tracepoint (no kprobes needed).
 *
 * The tracepoint runs in the context of the thread leaving the CPU, so its
 * stacks are captured there and kept per thread in "start". When the thread is
 * switched back in, one switch and the nanoseconds it was away are added to
 * (tgid, user stack, kernel stack). */
#include "profile_common.h"

struct start_rec {
    u64 ts;
    u32 tgid;
    s32 user_stack_id;
    s32 kernel_stack_id;
};

BPF_HASH(start, u32, struct start_rec, MAX_THREADS);
#define OFFCPU_KEY struct stack_key
#include "offcpu_counts.h"

TRACEPOINT_PROBE(sched, sched_switch)
{
    u64 now = bpf_ktime_get_ns();
    u32 prev_tid = args->prev_pid;
    u32 tgid = bpf_get_current_pid_tgid() >> 32; /* current is still prev */

    if (prev_tid != 0 && tgid != 0 && is_profiled(tgid)) {
        struct stack_key key = {.tgid = tgid};
        capture_stacks(args, &key);
        struct start_rec rec = {
            .ts = now,
            .tgid = tgid,
            .user_stack_id = key.user_stack_id,
            .kernel_stack_id = key.kernel_stack_id,
        };
        if (start.update(&prev_tid, &rec) != 0)
            stat_add(STAT_START_FULL);
    }

    u32 next_tid = args->next_pid;
    struct start_rec *rec = start.lookup(&next_tid);
    if (!rec)
        return 0;
    struct stack_key key = {
        .tgid = rec->tgid,
        .user_stack_id = rec->user_stack_id,
        .kernel_stack_id = rec->kernel_stack_id,
    };
    u64 ns = now > rec->ts ? now - rec->ts : 0;
    start.delete(&next_tid);
    stat_add(STAT_EVENTS);
    add_blocked(&key, ns);
    return 0;
}
