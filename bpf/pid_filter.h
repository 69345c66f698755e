/* The pid filter and the per-CPU counters every profiling program has.
 * The includer defines struct pid_setting and its counters' enum, ending with
 * STAT_COUNT, first. */
#pragma once

BPF_HASH(pids, u32, struct pid_setting, MAX_PIDS);
BPF_PERCPU_ARRAY(stats, u64, STAT_COUNT);

static __always_inline void stat_add(int which)
{
    u64 *v = stats.lookup(&which);
    if (v)
        (*v)++;
}
