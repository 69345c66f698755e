/* Off-CPU counts: one switch and the nanoseconds away, added per key.
 *
 * Like every count map here, two inner hash maps sit behind a one-slot
 * ARRAY_OF_MAPS ("active_counts"); user space drains by pointing the slot at
 * the other map (see profile_common.h: the kernel's synchronize_rcu on a
 * map-in-map update means no program still writes the drained one).
 *
 * The includer defines OFFCPU_KEY (the key type) first, and STAT_COUNTS_FULL
 * and STAT_NO_ACTIVE_MAP in its counters' enum. -D MAX_STACKS sizes the maps. */
#pragma once

struct offcpu_val {
    u64 switches;
    u64 ns;
};

BPF_TABLE("hash", OFFCPU_KEY, struct offcpu_val, counts_a, MAX_STACKS);
BPF_TABLE("hash", OFFCPU_KEY, struct offcpu_val, counts_b, MAX_STACKS);
BPF_ARRAY_OF_MAPS(active_counts, "counts_a", 1);

static __always_inline void add_blocked(OFFCPU_KEY *key, u64 ns)
{
    int slot = 0;
    void *counts = active_counts.lookup(&slot);
    if (!counts) {
        stat_add(STAT_NO_ACTIVE_MAP);
        return;
    }
    struct offcpu_val *val = bpf_map_lookup_elem(counts, key);
    if (!val) {
        struct offcpu_val zero = {};
        bpf_map_update_elem(counts, key, &zero, BPF_NOEXIST);
        val = bpf_map_lookup_elem(counts, key);
        if (!val) {
            stat_add(STAT_COUNTS_FULL);
            return;
        }
    }
    __sync_fetch_and_add(&val->switches, 1);
    __sync_fetch_and_add(&val->ns, ns);
}
