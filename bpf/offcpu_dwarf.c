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
 * as ring buffer drops.
 *
 * Repeats. A server switches out tens of thousands of times a second, nearly
 * always from the same few places; a 16 KiB copy per switch would fill the ring
 * buffer and the unwinder. So after unwinding a thread's switch-out, user space
 * stores a memo for the thread and place ("memos", by thread id, RIP and RSP;
 * user space keeps a few places per thread): its registers and every stack word
 * the unwind used (UnwindResult.reads; RBP only when the unwind used it, since
 * code without frame pointers keeps any value there). The unwound frames are a
 * function of exactly those, so when the thread next switches out with the same
 * registers and the same words in its stack, it would unwind to the same
 * frames: the program reads those words back (a few dozen 8-byte reads instead
 * of 16 KiB) and keeps the memo id and a kernel stack id in "start"; at
 * switch-in the switch is counted in the kernel under (tgid, memo id, kernel
 * stack id), like the frame-pointer program counts, with nothing sent. When the
 * kernel stack id cannot be had (a stack map bucket collision), the repeat is
 * sent through the ring buffer instead (SWITCH_OUT_REPEAT, the kernel stack
 * inline, no user stack) and paired as usual.
 * Every switch is counted once, by one of the two paths. */
#include "unwind_common.h"

struct start_rec {
    u64 ts;
    u64 memo_id;     /* nonzero: a repeat, counted in the kernel at switch-in */
    u32 tgid;
    s32 kstack_id;
};

/* Matches rover/unwind/memo.py. Offsets are from sp: the words lie in the copied window. */
struct memo {
    u64 ip;
    u64 sp;
    u64 bp;
    u64 id;
    u32 tgid;
    u32 words;
    u32 check_bp; /* 0: the unwind never used RBP's value (code built without frame pointers) */
    u32 pad;
    u16 offset[MEMO_WORDS];
    u64 value[MEMO_WORDS];
};

struct memo_key {
    u32 tid;
    u32 pad;
    u64 ip;
    u64 sp;
};

struct repeat_key {
    u32 tgid;
    s32 kstack_id;
    u64 memo_id;
};

BPF_HASH(start, u32, struct start_rec, MAX_THREADS);
/* Not preallocated: an element user space replaces stays intact (RCU) while a program
 * still reads it, so a check never mixes two memos. */
BPF_F_TABLE("hash", struct memo_key, struct memo, memos, MEMO_ENTRIES, BPF_F_NO_PREALLOC);
BPF_STACK_TRACE(stacks, STACK_MAP_SIZE);
#define OFFCPU_KEY struct repeat_key
#include "offcpu_counts.h"

/* Does the thread's stack still hold every word its memo's unwind read? */
static __always_inline int memo_matches(struct memo *m, struct sample_header *h)
{
    if (m->tgid != h->tgid || m->ip != h->ip || m->sp != h->sp)
        return 0;
    if (m->check_bp && m->bp != h->bp)
        return 0;
    u32 words = m->words;
    for (int i = 0; i < MEMO_WORDS; i++) {
        if (i >= words)
            break;
        u64 value = 0;
        if (bpf_probe_read_user(&value, sizeof(value), (void *)(h->sp + m->offset[i])) != 0)
            return 0;
        if (value != m->value[i])
            return 0;
    }
    return 1;
}

/* Send the header without the unused part of kstack and without a user stack. */
static __always_inline int send_repeat(struct sample *s)
{
    u64 size = offsetof(struct sample_header, kstack) + s->h.kstack_bytes;
    if (size > sizeof(struct sample_header))
        size = sizeof(struct sample_header);
    if (samples.ringbuf_output(s, size, 0) != 0) {
        stat_add(STAT_RINGBUF_DROPS);
        return -1;
    }
    return 0;
}

/* Record the switch-out of the thread in s (registers read): as a repeat counted in
 * the kernel, a repeat record, or a full sample. */
static __always_inline void switch_out(void *ctx, struct sample *s, u64 now)
{
    u32 tid = s->h.tid;
    struct start_rec rec = {.ts = now, .tgid = s->h.tgid};
    struct memo_key place = {.tid = tid, .ip = s->h.ip, .sp = s->h.sp};
    struct memo *m = memos.lookup(&place);
    int sent;
    if (m && !(s->h.flags & FLAG_NO_USER_REGS) && memo_matches(m, &s->h)) {
        rec.kstack_id = stacks.get_stackid(ctx, 0);
        if (rec.kstack_id >= 0 || rec.kstack_id == -EFAULT) {
            rec.memo_id = m->id;
            if (start.update(&tid, &rec) != 0)
                stat_add(STAT_START_FULL);
            return;
        }
        s->h.kind = SAMPLE_SWITCH_OUT_REPEAT;
        s->h.memo_id = m->id;
        capture_kernel_stack(ctx, &s->h);
        sent = send_repeat(s);
    } else {
        capture_kernel_stack(ctx, &s->h);
        if (!(s->h.flags & FLAG_NO_USER_REGS))
            copy_user_stack(s);
        sent = send_sample(s);
    }
    if (sent == 0 && start.update(&tid, &rec) != 0)
        stat_add(STAT_START_FULL);
}

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
            s->h.memo_id = 0;
            s->h.stack_bytes = 0;
            if (saved_user_regs(&s->h) != 0) {
                s->h.ip = s->h.sp = s->h.bp = 0;
                s->h.flags |= FLAG_NO_USER_REGS;
                stat_add(STAT_NO_USER_REGS);
            }
            switch_out(args, s, now);
        }
    }

    u32 next_tid = args->next_pid;
    struct start_rec *rec = start.lookup(&next_tid);
    if (!rec)
        return 0;
    u64 ns = now > rec->ts ? now - rec->ts : 0;
    stat_add(STAT_EVENTS);
    if (rec->memo_id) {
        struct repeat_key key = {.tgid = rec->tgid, .kstack_id = rec->kstack_id, .memo_id = rec->memo_id};
        start.delete(&next_tid);
        add_blocked(&key, ns);
        return 0;
    }
    struct switch_in done = {
        .kind = SAMPLE_SWITCH_IN,
        .tgid = rec->tgid,
        .tid = next_tid,
        .seq = rec->ts,
        .ns = ns,
    };
    start.delete(&next_tid);
    if (samples.ringbuf_output(&done, sizeof(done), 0) != 0)
        stat_add(STAT_RINGBUF_DROPS);
    return 0;
}
