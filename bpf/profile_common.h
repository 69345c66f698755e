/* Shared by every profiling program: the pid filter, the stack map, the
 * aggregation key and the drop/collision counters.
 *
 * Counts live in two inner hash maps behind a one-slot ARRAY_OF_MAPS
 * ("active_counts"). User space drains by pointing the slot at the other inner
 * map: the kernel runs synchronize_rcu() on every map-in-map update, so when
 * that syscall returns no program can still be writing the old map, which is
 * then read and cleared with no writer racing it. Every event is counted in
 * exactly one drain.
 *
 * Map sizes come from -D flags set by the loader (MAX_PIDS, MAX_STACKS,
 * STACK_MAP_SIZE).
 */
#pragma once

#include <uapi/linux/ptrace.h>
#include <linux/sched.h>

struct stack_key {
    u32 tgid;
    s32 user_stack_id;   /* < 0: no user stack (errno from bpf_get_stackid) */
    s32 kernel_stack_id; /* < 0: no kernel stack */
};

enum rover_stat {
    STAT_EVENTS = 0,          /* events seen for profiled processes */
    STAT_USTACK_COLLISION,    /* user stack lost: stack map bucket held another stack */
    STAT_KSTACK_COLLISION,    /* kernel stack lost the same way */
    STAT_USTACK_ERROR,        /* user stack not captured for another reason (not EFAULT) */
    STAT_KSTACK_ERROR,
    STAT_COUNTS_FULL,         /* event dropped: counts map full */
    STAT_START_FULL,          /* off-CPU: switch-out not recorded, start map full */
    STAT_NO_ACTIVE_MAP,       /* should never happen: map-in-map slot empty */
    STAT_COUNT
};

#include "pid_filter.h"
BPF_STACK_TRACE(stacks, STACK_MAP_SIZE);


/* Stack id, or a negative errno. EFAULT (no user stack: kernel thread, or
 * kernel stack of a sample taken in user mode) is normal and not counted. */
static __always_inline s32 stack_id(void *ctx, u64 flags, int collision_stat, int error_stat)
{
    int id = stacks.get_stackid(ctx, flags);
    if (id >= 0)
        return id;
    if (id == -EEXIST)
        stat_add(collision_stat);
    else if (id != -EFAULT)
        stat_add(error_stat);
    return id;
}

static __always_inline void capture_stacks(void *ctx, struct stack_key *key)
{
    key->user_stack_id =
        stack_id(ctx, BPF_F_USER_STACK, STAT_USTACK_COLLISION, STAT_USTACK_ERROR);
    key->kernel_stack_id = stack_id(ctx, 0, STAT_KSTACK_COLLISION, STAT_KSTACK_ERROR);
}
