/* Off-CPU profiling for .eh_frame unwinding, on sched:sched_switch.
 *
 * A stack copy is far too big to keep per thread in a map (MAX_THREADS x 16 KiB),
 * so a switch is sent as two records: at switch-out (the tracepoint runs as the
 * leaving thread) a SWITCH_OUT sample with its registers and stacks, stamped
 * with the switch-out time; at switch-in a small SWITCH_IN record with the same
 * stamp and the time away. "start" keeps only the stamp per thread. User space
 * unwinds the SWITCH_OUT sample when it arrives and counts it when its
 * SWITCH_IN arrives. A SWITCH_OUT that does not fit in the ring buffer is not
 * recorded in "start", so its switch-in sends nothing; both losses are counted
 * as ring buffer drops. */
#include "unwind_common.h"

struct start_rec {
    u64 ts;
    u32 tgid;
    u32 pad;
};

BPF_HASH(start, u32, struct start_rec, MAX_THREADS);

TRACEPOINT_PROBE(sched, sched_switch)
{
    u64 now = bpf_ktime_get_ns();
    u32 prev_tid = args->prev_pid;
    u32 tgid = bpf_get_current_pid_tgid() >> 32; /* current is still prev */

    if (prev_tid != 0 && tgid != 0 && is_profiled(tgid)) {
        struct sample *s = scratch_slot();
        if (s) {
            s->h.kind = SAMPLE_SWITCH_OUT;
            s->h.tgid = tgid;
            s->h.tid = prev_tid;
            s->h.flags = 0;
            s->h.seq = now;
            s->h.stack_bytes = 0;
            if (saved_user_regs(&s->h) != 0) {
                s->h.ip = s->h.sp = s->h.bp = 0;
                s->h.flags |= FLAG_NO_USER_REGS;
                stat_add(STAT_NO_USER_REGS);
            }
            capture_kernel_stack(args, &s->h);
            if (!(s->h.flags & FLAG_NO_USER_REGS))
                copy_user_stack(s);
            if (send_sample(s) == 0) {
                struct start_rec rec = {.ts = now, .tgid = tgid};
                if (start.update(&prev_tid, &rec) != 0)
                    stat_add(STAT_START_FULL);
            }
        }
    }

    u32 next_tid = args->next_pid;
    struct start_rec *rec = start.lookup(&next_tid);
    if (!rec)
        return 0;
    struct switch_in done = {
        .kind = SAMPLE_SWITCH_IN,
        .tgid = rec->tgid,
        .tid = next_tid,
        .seq = rec->ts,
        .ns = now > rec->ts ? now - rec->ts : 0,
    };
    start.delete(&next_tid);
    stat_add(STAT_EVENTS);
    if (samples.ringbuf_output(&done, sizeof(done), 0) != 0)
        stat_add(STAT_RINGBUF_DROPS);
    return 0;
}
