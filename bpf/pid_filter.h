/* The pid filter and the per-CPU counters every profiling program has.
 * The includer defines its counters' enum, ending with STAT_COUNT, first. */
#pragma once

BPF_HASH(pids, u32, u8, MAX_PIDS);
BPF_PERCPU_ARRAY(stats, u64, STAT_COUNT);

static __always_inline void stat_add(int which)
{
    u64 *v = stats.lookup(&which);
    if (v)
        (*v)++;
}

static __always_inline int is_profiled(u32 tgid)
{
    return pids.lookup(&tgid) != 0;
}
