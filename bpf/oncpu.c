/* On-CPU profiling: a software CPU-clock perf event on every CPU samples the
 * running thread; samples of profiled processes are counted per
 * (tgid, user stack, kernel stack), the user stack walked by frame pointers or
 * by CFI as the process's setting says (profile_common.h, cfi_walk.h). */
#include <uapi/linux/bpf_perf_event.h>
#include "profile_common.h"
#include "cfi_walk.h"

BPF_TABLE("hash", struct stack_key, u64, counts_a, MAX_STACKS);
BPF_TABLE("hash", struct stack_key, u64, counts_b, MAX_STACKS);
BPF_ARRAY_OF_MAPS(active_counts, "counts_a", 1);

static __always_inline void count_sample(struct stack_key *key)
{
    int slot = 0;
    void *counts = active_counts.lookup(&slot);
    if (!counts) {
        stat_add(STAT_NO_ACTIVE_MAP);
        return;
    }
    stat_add(STAT_EVENTS);
    u64 *count = bpf_map_lookup_elem(counts, key);
    if (count) {
        __sync_fetch_and_add(count, 1);
        return;
    }
    u64 one = 1;
    if (bpf_map_update_elem(counts, key, &one, BPF_NOEXIST) != 0) {
        /* Another CPU may have inserted the key first: add to it. */
        count = bpf_map_lookup_elem(counts, key);
        if (count)
            __sync_fetch_and_add(count, 1);
        else
            stat_add(STAT_COUNTS_FULL);
    }
}

static __always_inline void count_walked(struct walk_state *w)
{
    struct stack_key key = {.tgid = w->tgid, .kernel_stack_id = w->kstack_id};
    key.user_hash = store_user_stack(w);
    key.user_stack_id = -EFAULT;
    count_sample(&key);
}

/* The tail-called walk: a few more frames, then itself again or the count. */
int on_cpu_walk(struct bpf_perf_event_data *ctx)
{
    u32 zero = 0;
    struct walk_state *w = walk_states.lookup(&zero);
    if (!w)
        return 0;
    walk_some(ctx, w);
    count_walked(w);
    return 0;
}

int on_cpu_sample(struct bpf_perf_event_data *ctx)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tgid = pid_tgid >> 32;
    struct pid_setting *setting = profiled(tgid);
    if (!setting || past_deadline(setting, bpf_ktime_get_ns()))
        return 0;
    if (setting->mode != MODE_CFI) {
        struct stack_key key = {.tgid = tgid};
        key.user_stack_id = fp_user_stack(&ctx->regs);
        key.kernel_stack_id = kernel_stack(&ctx->regs);
        count_sample(&key);
        return 0;
    }
    struct walk_state *w = walk_begin(tgid, (u32)pid_tgid);
    if (!w) {
        struct stack_key key = {.tgid = tgid, .user_stack_id = -EFAULT};
        key.kernel_stack_id = kernel_stack(&ctx->regs);
        count_sample(&key);
        return 0;
    }
    w->kstack_id = kernel_stack(&ctx->regs);
    if (user_regs(w, &ctx->regs) == 0)
        walk_start(ctx, w);
    count_walked(w);
    return 0;
}
