/* On-CPU profiling for .eh_frame unwinding: a CPU-clock perf event on every CPU;
 * a sample of a profiled process sends its user registers, a copy of the top of
 * its user stack and its kernel stack to user space (see unwind_common.h), which
 * unwinds and counts it. */
#include <uapi/linux/bpf_perf_event.h>
#include "unwind_common.h"

/* x86-64 user addresses lie below 2^47 (2^56 with 5-level paging); the kernel's above. */
#define USER_SPACE_END (1ULL << 56)

int on_cpu_sample(struct bpf_perf_event_data *ctx)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tgid = pid_tgid >> 32;
    if (tgid == 0 || !is_profiled(tgid))
        return 0;
    stat_add(STAT_EVENTS);
    struct sample *s = scratch_slot();
    if (!s)
        return 0;
    s->h.kind = SAMPLE_ON_CPU;
    s->h.tgid = tgid;
    s->h.tid = (u32)pid_tgid;
    s->h.flags = 0;
    s->h.seq = 0;
    s->h.memo_id = 0;
    s->h.stack_bytes = 0;
    u64 ip = ctx->regs.ip;
    if (ip < USER_SPACE_END) { /* interrupted in user mode: these are the user regs */
        s->h.ip = ip;
        s->h.sp = ctx->regs.sp;
        s->h.bp = ctx->regs.bp;
        s->h.regs[0] = ctx->regs.ax;
        s->h.regs[1] = ctx->regs.dx;
        s->h.regs[2] = ctx->regs.cx;
        s->h.regs[3] = ctx->regs.bx;
        s->h.regs[4] = ctx->regs.si;
        s->h.regs[5] = ctx->regs.di;
        s->h.regs[6] = ctx->regs.bp;
        s->h.regs[7] = ctx->regs.sp;
        s->h.regs[8] = ctx->regs.r8;
        s->h.regs[9] = ctx->regs.r9;
        s->h.regs[10] = ctx->regs.r10;
        s->h.regs[11] = ctx->regs.r11;
        s->h.regs[12] = ctx->regs.r12;
        s->h.regs[13] = ctx->regs.r13;
        s->h.regs[14] = ctx->regs.r14;
        s->h.regs[15] = ctx->regs.r15;
        s->h.regs[16] = ip;
    } else if (saved_user_regs(&s->h) != 0) {
        s->h.ip = s->h.sp = s->h.bp = 0;
        s->h.flags |= FLAG_NO_USER_REGS;
        stat_add(STAT_NO_USER_REGS);
    }
    capture_kernel_stack(ctx, &s->h);
    if (!(s->h.flags & FLAG_NO_USER_REGS))
        copy_user_stack(s);
    send_sample(s);
    return 0;
}
