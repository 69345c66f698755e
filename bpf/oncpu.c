/* On-CPU profiling: a software CPU-clock perf event on every CPU samples the
 * running thread; samples of profiled processes are counted per
 * (tgid, user stack, kernel stack). */
#include <uapi/linux/bpf_perf_event.h>
#include "profile_common.h"

BPF_TABLE("hash", struct stack_key, u64, counts_a, MAX_STACKS);
BPF_TABLE("hash", struct stack_key, u64, counts_b, MAX_STACKS);
BPF_ARRAY_OF_MAPS(active_counts, "counts_a", 1);

int on_cpu_sample(struct bpf_perf_event_data *ctx)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (tgid == 0 || !is_profiled(tgid))
        return 0;
    stat_add(STAT_EVENTS);

    struct stack_key key = {.tgid = tgid};
    capture_stacks(&ctx->regs, &key);

    int slot = 0;
    void *counts = active_counts.lookup(&slot);
    if (!counts) {
        stat_add(STAT_NO_ACTIVE_MAP);
        return 0;
    }
    u64 *count = bpf_map_lookup_elem(counts, &key);
    if (count) {
        __sync_fetch_and_add(count, 1);
        return 0;
    }
    u64 one = 1;
    if (bpf_map_update_elem(counts, &key, &one, BPF_NOEXIST) != 0) {
        /* Another CPU may have inserted the key first: add to it. */
        count = bpf_map_lookup_elem(counts, &key);
        if (count)
            __sync_fetch_and_add(count, 1);
        else
            stat_add(STAT_COUNTS_FULL);
    }
    return 0;
}
