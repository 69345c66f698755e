/* Shared by both profiling programs (oncpu.c, offcpu.c): the pid filter and what it
 * says per process, the aggregation key, the stack maps and the counters.
 *
 * A process is profiled in one of two ways, chosen per process by user space:
 * - frame pointers: the kernel's bpf_get_stackid walks them (cheap, but loses the
 *   callers of code built without them);
 * - CFI: cfi_walk.h walks the user stack with unwind rows user space derived from the
 *   files' .eh_frame/.debug_frame and loaded into maps, and stores the stack in
 *   "user_stacks" under a hash of its addresses.
 * Either way the event is counted here, in the kernel, per (tgid, user stack, kernel
 * stack); nothing is sent to user space per event.
 *
 * Counts live in two inner hash maps behind a one-slot ARRAY_OF_MAPS
 * ("active_counts"). User space drains by pointing the slot at the other inner
 * map: the kernel runs synchronize_rcu() on every map-in-map update, so when
 * that syscall returns no program can still be writing the old map, which is
 * then read and cleared with no writer racing it. Every event is counted in
 * exactly one drain.
 *
 * Map sizes come from -D flags set by the loader (MAX_PIDS, MAX_STACKS,
 * STACK_MAP_SIZE, USER_STACKS).
 *
 * rover/bpf/contract.py reads the enums and structs of this file (and of
 * cfi_walk.h): the comment after each stat is "name: meaning", its name in Python
 * and in /metrics; "name (info): meaning" for those that count no loss.
 */
#pragma once

#include <uapi/linux/ptrace.h>
#include <linux/sched.h>

enum unwind_mode {
    MODE_FRAME_POINTER = 1, /* bpf_get_stackid */
    MODE_CFI = 2,           /* the walk of cfi_walk.h */
};

/* The pid filter's value: how to unwind the process, and until when to count it. */
struct pid_setting {
    u32 mode;        /* enum unwind_mode */
    u32 pad;
    u64 deadline_ns; /* bpf_ktime_get_ns() after which nothing is counted; 0: none */
};

struct stack_key {
    u32 tgid;
    s32 kernel_stack_id; /* < 0: no kernel stack (errno from bpf_get_stackid) */
    s32 user_stack_id;   /* frame pointers: the stack map id; < 0: none (errno) */
    u32 pad;
    u64 user_hash;       /* CFI: the key of the stack in user_stacks; 0: none */
};

enum rover_stat {
    STAT_EVENTS = 0,         /* events (info): events counted for profiled processes */
    STAT_USTACK_COLLISION,   /* user_stack_collisions: user stack lost, its stack map bucket held another */
    STAT_KSTACK_COLLISION,   /* kernel_stack_collisions: kernel stack lost the same way */
    STAT_USTACK_ERROR,       /* user_stack_errors: user stack not captured for another reason */
    STAT_KSTACK_ERROR,       /* kernel_stack_errors: kernel stack not captured for another reason */
    STAT_COUNTS_FULL,        /* counts_map_full: event dropped, the counts map was full */
    STAT_START_FULL,         /* start_map_full: off-CPU switch-out not recorded, the start map was full */
    STAT_NO_ACTIVE_MAP,      /* no_active_map: event dropped, no counts map in the slot (never expected) */
    STAT_AFTER_DEADLINE,     /* after_deadline (info): event after its process's profiling window, not counted */
    STAT_NO_USER_REGS,       /* no_user_regs: the user registers could not be read: no user stack */
    STAT_WALK_NO_STATE,      /* walk_no_state: no per-CPU walk state (never expected): no user stack */
    STAT_WALK_TAIL_CALL,     /* walk_tail_call_failed: the walk could not go on: stack cut short, counted */
    STAT_USER_STACKS_FULL,   /* user_stacks_full: a walked stack could not be stored: no user stack */
    STAT_WALK_TRUNCATED,     /* walk_truncated (info): deeper than the frame limit: [truncated] added */
    STAT_WALK_UNMAPPED,      /* walk_unmapped: a pc in no known mapping (maps are re-read): stack ends there */
    STAT_WALK_LOADING,       /* walk_tables_loading (info): a frame in a file whose table is still loading: [unwind tables loading] added */
    STAT_WALK_NO_PROCESS,    /* walk_process_unknown (info): the process's mappings are not loaded yet: leaf and [unwind tables loading] */
    STAT_WALK_BAD_FRAME,     /* walk_bad_frame: a stack read failed or led nowhere: stack ends there */
    STAT_WALK_FP_FRAMES,     /* walk_fp_frames (info): frames without CFI (JIT code, no table) stepped by frame pointer */
    STAT_WALK_UNSUPPORTED,   /* walk_unsupported_rule (info): frames whose CFI rule the kernel cannot evaluate, stepped by frame pointer */
    STAT_WALK_SIGNAL_FRAMES, /* walk_signal_frames (info): signal frames walked through */
    STAT_SWITCH_IN_UNSEEN,   /* offcpu_switch_in_unseen: a thread came back unseen: its switch counted, its time away not */
    STAT_COUNT
};

#include "pid_filter.h"
BPF_STACK_TRACE(stacks, STACK_MAP_SIZE);

/* The setting of a profiled process, or NULL. */
static __always_inline struct pid_setting *profiled(u32 tgid)
{
    if (tgid == 0)
        return 0;
    return pids.lookup(&tgid);
}

static __always_inline int past_deadline(struct pid_setting *setting, u64 now)
{
    if (setting->deadline_ns && now > setting->deadline_ns) {
        stat_add(STAT_AFTER_DEADLINE);
        return 1;
    }
    return 0;
}

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

static __always_inline s32 kernel_stack(void *ctx)
{
    return stack_id(ctx, 0, STAT_KSTACK_COLLISION, STAT_KSTACK_ERROR);
}

static __always_inline s32 fp_user_stack(void *ctx)
{
    return stack_id(ctx, BPF_F_USER_STACK, STAT_USTACK_COLLISION, STAT_USTACK_ERROR);
}
