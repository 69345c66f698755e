/* Walking a user stack in the kernel with unwind rows derived from CFI.
 *
 * User space (rover/unwind/kernel_tables.py) turns each executable file's
 * .eh_frame/.debug_frame into rows, one per address range: how to find the CFA
 * (a register plus an offset, a load from there, the PLT's rule, a signal frame,
 * the outermost frame, no CFI at all) and where the caller's RBP is. A file's rows
 * go into one inner array map (16 KiB shards of 1024 rows, sorted by address, after
 * a directory of each shard's first address), loaded once and shared by every
 * process that maps the file: "unwind_files" holds them by slot. Each profiled
 * process has the table of its executable mappings in "proc_maps" (address range,
 * load bias, file slot, and whether the file's rows are loaded, loading, or absent).
 *
 * A walk starts from the user registers (where the sample interrupted user code, or
 * where the thread entered the kernel) and steps one frame at a time: find the
 * mapping (binary search), the file's row (binary search in the directory, then in
 * a shard), compute the CFA, read the return address below it and the caller's RBP
 * if the row saved it. Frames without CFI (JIT code, files without tables) and
 * rules the kernel cannot evaluate are stepped by frame pointer. FRAMES_PER_CALL
 * frames are walked per program run, then the program tail-calls itself
 * ("walk_progs"), so the verifier sees a bounded program; the state lives in a
 * per-CPU map. The finished stack is stored in "user_stacks" under a hash of its
 * addresses; the includer counts it.
 *
 * Every way a walk ends early is counted (enum rover_stat in profile_common.h).
 *
 * -D flags set by the loader: MAX_PIDS, MAX_FILES, USER_STACKS.
 */
#pragma once

#define MAX_FRAMES 127          /* user frames; a deeper stack ends with [truncated] */
#define FRAMES_PER_CALL 8       /* frames walked per program run */
#define MAX_WALK_CALLS (MAX_FRAMES / FRAMES_PER_CALL + 2)
#define SHARD_ROWS 1024         /* rows per inner map element (16 KiB) */
#define ROW_SEARCH_STEPS 11     /* log2(SHARD_ROWS) + 1 */
#define DIR_ENTRIES 2048        /* shards per file: 2M rows */
#define DIR_SEARCH_STEPS 12
#define MAX_MAPPINGS 256        /* executable mappings per process */
#define MAPPING_SEARCH_STEPS 9
#define USER_REGS 17            /* rax rdx rcx rbx rsi rdi rbp rsp r8-r15 rip, by DWARF number */
#define REG_RBP 6
#define REG_RSP 7
#define REG_RIP 16
/* x86-64 user addresses lie below 2^47 (2^56 with 5-level paging); the kernel's above. */
#define USER_SPACE_END (1ULL << 56)

/* Markers ending a stack: never user addresses (see rover/unwind/markers.py). */
#define MARKER_TRUNCATED 0xFFFFFFFFFFFFFFF0ULL
#define MARKER_LOADING 0xFFFFFFFFFFFFFFF2ULL

enum cfa_rule {
    CFA_REG_OFFSET = 0, /* cfa = reg + cfa_offset */
    CFA_REG_DEREF = 1,  /* cfa = *(reg + cfa_offset) + cfa_add (stack realignment) */
    CFA_PLT = 2,        /* cfa = rsp + 8, and 8 more once (pc & 15) >= cfa_offset */
    CFA_SIGNAL = 3,     /* a sigreturn trampoline: the registers are in the signal frame */
    CFA_OUTERMOST = 4,  /* the first frame of a thread: the walk is complete */
    CFA_NONE = 5,       /* no CFI covers the address: step by frame pointer */
    CFA_UNSUPPORTED = 6,/* a rule the kernel cannot evaluate: step by frame pointer */
};

enum rbp_rule {
    RBP_SAME = 0,    /* the caller's rbp is still in rbp */
    RBP_AT_CFA = 1,  /* saved at cfa + rbp_offset */
    RBP_AT_REG = 2,  /* saved at rbp_reg + rbp_offset */
    RBP_IS_REG = 3,  /* the value is rbp_reg + rbp_offset */
    RBP_UNKNOWN = 4, /* not recoverable here */
};

struct unwind_row {
    u32 pc;         /* the file's address (ELF vaddr) where this row starts */
    s32 cfa_offset;
    s16 rbp_offset;
    s16 cfa_add;    /* CFA_REG_DEREF: added after the load */
    u8 cfa_rule;    /* enum cfa_rule */
    u8 cfa_reg;     /* DWARF register number */
    u8 rbp_rule;    /* enum rbp_rule */
    u8 rbp_reg;
};

struct unwind_shard {
    struct unwind_row rows[SHARD_ROWS];
};

/* Element 0 of a file's inner map; shard i is element i + 1. */
struct shard_directory {
    u32 shards;
    u32 rows;
    u32 first_pc[DIR_ENTRIES];
};

enum mapping_state {
    MAPPING_TABLE = 0,   /* the file's rows are in unwind_files[file] */
    MAPPING_NO_CFI = 1,  /* anonymous code or a file without CFI: frame pointers */
    MAPPING_LOADING = 2, /* the file's rows are being loaded */
};

struct exec_mapping {
    u64 start;
    u64 end;
    u64 bias; /* runtime address minus the file's address */
    u32 file; /* slot in unwind_files */
    u32 state;
};

struct proc_mappings {
    u32 count; /* sorted by start */
    u32 pad;
    struct exec_mapping m[MAX_MAPPINGS];
};

struct user_stack {
    u32 len;
    u32 pad;
    u64 ips[MAX_FRAMES + 1]; /* leaf first; the last may be a marker */
};

struct walk_state {
    u64 ip;
    u64 sp;
    u64 bp;
    u64 regs[USER_REGS]; /* valid while regs_valid: at the leaf, after a signal frame */
    u64 ts;              /* off-CPU: the switch-out time */
    u32 tgid;
    u32 tid;
    s32 kstack_id;
    u32 regs_valid;
    u32 exact_pc;        /* ip is an exact pc (the leaf, or interrupted by a signal) */
    u32 calls;           /* program runs so far */
    u32 scratch;         /* see launder() */
    u32 pad;
    struct user_stack stack;
};

BPF_F_TABLE("array", u32, struct unwind_shard, shard_template, 1, BPF_F_INNER_MAP);
BPF_ARRAY_OF_MAPS(unwind_files, "shard_template", MAX_FILES);
BPF_F_TABLE("hash", u32, struct proc_mappings, proc_maps, MAX_PIDS, BPF_F_NO_PREALLOC);
BPF_HASH(maps_stale, u32, u32, MAX_PIDS); /* processes whose walk met a pc in no mapping */
BPF_PERCPU_ARRAY(walk_states, struct walk_state, 1);
BPF_F_TABLE("hash", u64, struct user_stack, user_stacks, USER_STACKS, BPF_F_NO_PREALLOC);
BPF_PROG_ARRAY(walk_progs, 1);

/* ``v``, passed through memory the verifier does not track. A binary search's bounds
 * differ on every path, so the verifier, which follows every path, can prune none of
 * them if it must know those bounds exactly (2^steps paths per search, searches nested:
 * far past its limit). Indexing with a laundered (and masked) value lets it treat the
 * bounds as imprecise, and paths that differ only in them as the same. */
static __always_inline u32 launder(struct walk_state *w, u32 v)
{
    *(volatile u32 *)&w->scratch = v;
    return *(volatile u32 *)&w->scratch;
}

static __always_inline int read_user(u64 *value, u64 address)
{
    return bpf_probe_read_user(value, sizeof(*value), (void *)address);
}

static __always_inline void push(struct walk_state *w, u64 ip)
{
    u32 n = w->stack.len;
    if (n <= MAX_FRAMES) {
        w->stack.ips[n & MAX_FRAMES] = ip;
        w->stack.len = n + 1;
    }
}

/* The per-CPU walk state, reset for a new walk of thread tid of tgid. */
static __always_inline struct walk_state *walk_begin(u32 tgid, u32 tid)
{
    u32 zero = 0;
    struct walk_state *w = walk_states.lookup(&zero);
    if (!w) {
        stat_add(STAT_WALK_NO_STATE);
        return 0;
    }
    w->tgid = tgid;
    w->tid = tid;
    w->kstack_id = -EFAULT;
    w->regs_valid = 0;
    w->exact_pc = 1;
    w->calls = 0;
    w->ts = 0;
    w->stack.len = 0;
    return w;
}

static __always_inline void regs_from(struct walk_state *w, struct pt_regs *r)
{
    w->ip = r->ip;
    w->sp = r->sp;
    w->bp = r->bp;
    w->regs[0] = r->ax;
    w->regs[1] = r->dx;
    w->regs[2] = r->cx;
    w->regs[3] = r->bx;
    w->regs[4] = r->si;
    w->regs[5] = r->di;
    w->regs[6] = r->bp;
    w->regs[7] = r->sp;
    w->regs[8] = r->r8;
    w->regs[9] = r->r9;
    w->regs[10] = r->r10;
    w->regs[11] = r->r11;
    w->regs[12] = r->r12;
    w->regs[13] = r->r13;
    w->regs[14] = r->r14;
    w->regs[15] = r->r15;
    w->regs[16] = r->ip;
    w->regs_valid = 1;
}

/* The user registers of the current thread: ``interrupted`` when they are the user
 * mode's (an on-CPU sample taken in user code), else those saved on its last kernel
 * entry (a system call, or the interrupt that took the sample). 0 on success. */
static __always_inline int user_regs(struct walk_state *w, struct pt_regs *interrupted)
{
    if (interrupted && interrupted->ip < USER_SPACE_END) {
        regs_from(w, interrupted);
        return 0;
    }
    struct task_struct *task = bpf_get_current_task_btf();
    struct pt_regs *saved = (struct pt_regs *)bpf_task_pt_regs(task);
    struct pt_regs regs = {};
    if (!saved || bpf_probe_read_kernel(&regs, sizeof(regs), saved) != 0) {
        stat_add(STAT_NO_USER_REGS);
        return -1;
    }
    if (regs.ip == 0 || regs.ip >= USER_SPACE_END)
        return -1; /* a kernel thread: it has no user stack */
    regs_from(w, &regs);
    return 0;
}

static __always_inline struct exec_mapping *find_mapping(struct walk_state *w,
                                                         struct proc_mappings *p, u64 pc)
{
    u32 count = p->count;
    if (count > MAX_MAPPINGS)
        count = MAX_MAPPINGS;
    u32 lo = 0, hi = launder(w, count);
    for (int i = 0; i < MAPPING_SEARCH_STEPS; i++) {
        if (lo >= hi)
            break;
        u32 mid = (lo + hi) >> 1;
        if (p->m[launder(w, mid) & (MAX_MAPPINGS - 1)].start <= pc)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0)
        return 0;
    struct exec_mapping *m = &p->m[launder(w, lo - 1) & (MAX_MAPPINGS - 1)];
    return pc < m->end ? m : 0;
}

/* The row of file ``file`` covering file address ``pc``, or NULL. */
static __always_inline struct unwind_row *find_row(struct walk_state *w, u32 file, u64 pc)
{
    if (pc > 0xffffffffULL)
        return 0;
    u32 rel = pc;
    void *rows = unwind_files.lookup(&file);
    if (!rows)
        return 0;
    u32 key = 0;
    struct shard_directory *dir = bpf_map_lookup_elem(rows, &key);
    if (!dir)
        return 0;
    u32 total = dir->rows;
    u32 shards = dir->shards;
    if (shards > DIR_ENTRIES)
        shards = DIR_ENTRIES;
    u32 lo = 0, hi = launder(w, shards);
    for (int i = 0; i < DIR_SEARCH_STEPS; i++) {
        if (lo >= hi)
            break;
        u32 mid = (lo + hi) >> 1;
        if (dir->first_pc[launder(w, mid) & (DIR_ENTRIES - 1)] <= rel)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0)
        return 0; /* below the file's first row */
    u32 shard_index = launder(w, lo - 1);
    key = shard_index + 1;
    struct unwind_shard *shard = bpf_map_lookup_elem(rows, &key);
    if (!shard)
        return 0;
    u32 used = total - shard_index * SHARD_ROWS;
    if (used > SHARD_ROWS)
        used = SHARD_ROWS;
    lo = 0;
    hi = launder(w, used);
    for (int i = 0; i < ROW_SEARCH_STEPS; i++) {
        if (lo >= hi)
            break;
        u32 mid = (lo + hi) >> 1;
        if (shard->rows[launder(w, mid) & (SHARD_ROWS - 1)].pc <= rel)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0)
        return 0;
    return &shard->rows[launder(w, lo - 1) & (SHARD_ROWS - 1)];
}

/* The value of DWARF register ``reg`` in the current frame; 0 when it is not known. */
static __always_inline int reg_value(struct walk_state *w, u32 reg, u64 *value)
{
    if (reg == REG_RSP) {
        *value = w->sp;
        return 1;
    }
    if (reg == REG_RBP) {
        *value = w->bp;
        return 1;
    }
    if (!w->regs_valid || reg >= USER_REGS)
        return 0;
    *value = w->regs[reg & 15];
    if (reg == REG_RIP)
        *value = w->ip;
    return 1;
}

/* One step by frame pointer: [rbp] is the caller's rbp, [rbp + 8] the return address. */
static __always_inline int fp_step(struct walk_state *w)
{
    u64 bp = w->bp, next_bp = 0, ra = 0;
    if (bp < w->sp || (bp & 7) || read_user(&next_bp, bp) || read_user(&ra, bp + 8)) {
        stat_add(STAT_WALK_BAD_FRAME);
        return 0;
    }
    w->ip = ra;
    w->sp = bp + 16;
    w->bp = next_bp;
    w->regs_valid = 0;
    w->exact_pc = 0;
    return ra != 0;
}

/* Through a sigreturn trampoline (__restore_rt): at its rsp the kernel's rt_sigframe
 * holds struct ucontext (40 bytes of uc_flags, uc_link, uc_stack), then struct
 * sigcontext: r8-r15, rdi, rsi, rbp, rbx, rdx, rax, rcx, rsp, rip. The interrupted
 * code's registers are all known again, and its pc is exact. */
static __always_inline int signal_step(struct walk_state *w)
{
    u64 sc[17] = {};
    if (bpf_probe_read_user(sc, sizeof(sc), (void *)(w->sp + 40)) != 0) {
        stat_add(STAT_WALK_BAD_FRAME);
        return 0;
    }
    w->regs[8] = sc[0];
    w->regs[9] = sc[1];
    w->regs[10] = sc[2];
    w->regs[11] = sc[3];
    w->regs[12] = sc[4];
    w->regs[13] = sc[5];
    w->regs[14] = sc[6];
    w->regs[15] = sc[7];
    w->regs[5] = sc[8];
    w->regs[4] = sc[9];
    w->regs[6] = sc[10];
    w->regs[3] = sc[11];
    w->regs[1] = sc[12];
    w->regs[0] = sc[13];
    w->regs[2] = sc[14];
    w->regs[7] = sc[15];
    w->regs[16] = sc[16];
    w->bp = sc[10];
    w->sp = sc[15];
    w->ip = sc[16];
    w->regs_valid = 1;
    w->exact_pc = 1;
    stat_add(STAT_WALK_SIGNAL_FRAMES);
    return w->ip != 0;
}

/* Record the current frame and step to its caller; 0 when the walk is over. */
static __always_inline int walk_frame(struct walk_state *w, struct proc_mappings *pm)
{
    u64 ip = w->ip;
    if (w->stack.len >= MAX_FRAMES) {
        push(w, MARKER_TRUNCATED);
        stat_add(STAT_WALK_TRUNCATED);
        return 0;
    }
    /* A return address is looked up one byte back (the call may end its function); an
     * exact pc after the leaf is recorded one byte on, so the symbolizer, which takes
     * one back from every address but the leaf's, lands on it. */
    u64 pc = w->exact_pc ? ip : ip - 1;
    push(w, (w->exact_pc && w->stack.len) ? ip + 1 : ip);
    struct exec_mapping *m = find_mapping(w, pm, pc);
    if (!m) {
        u32 one = 1;
        maps_stale.update(&w->tgid, &one);
        stat_add(STAT_WALK_UNMAPPED);
        return 0;
    }
    if (m->state == MAPPING_LOADING) {
        push(w, MARKER_LOADING);
        stat_add(STAT_WALK_LOADING);
        return 0;
    }
    struct unwind_row *row = 0;
    if (m->state == MAPPING_TABLE)
        row = find_row(w, m->file, pc - m->bias);
    if (!row) {
        stat_add(STAT_WALK_FP_FRAMES);
        return fp_step(w);
    }
    u32 rule = row->cfa_rule;
    if (rule == CFA_OUTERMOST)
        return 0;
    if (rule == CFA_SIGNAL)
        return signal_step(w);
    u64 cfa = 0, base = 0;
    if (rule == CFA_PLT) {
        cfa = w->sp + 8 + (((pc - m->bias) & 15) >= (u64)row->cfa_offset ? 8 : 0);
    } else if ((rule == CFA_REG_OFFSET || rule == CFA_REG_DEREF) &&
               reg_value(w, row->cfa_reg, &base)) {
        cfa = base + (s64)row->cfa_offset;
        if (rule == CFA_REG_DEREF) {
            if (read_user(&cfa, cfa)) {
                stat_add(STAT_WALK_BAD_FRAME);
                return 0;
            }
            cfa += (s64)row->cfa_add;
        }
    } else {
        stat_add(rule == CFA_NONE ? STAT_WALK_FP_FRAMES : STAT_WALK_UNSUPPORTED);
        return fp_step(w);
    }
    u64 ra = 0;
    if (cfa <= w->sp || read_user(&ra, cfa - 8)) {
        stat_add(STAT_WALK_BAD_FRAME);
        return 0;
    }
    u64 bp = w->bp;
    u32 rbp = row->rbp_rule;
    if (rbp == RBP_AT_CFA) {
        if (read_user(&bp, cfa + (s64)row->rbp_offset))
            bp = 0;
    } else if (rbp == RBP_AT_REG || rbp == RBP_IS_REG) {
        if (!reg_value(w, row->rbp_reg, &base))
            bp = 0;
        else if (rbp == RBP_IS_REG)
            bp = base + (s64)row->rbp_offset;
        else if (read_user(&bp, base + (s64)row->rbp_offset))
            bp = 0;
    } else if (rbp == RBP_UNKNOWN) {
        bp = 0;
    }
    w->ip = ra;
    w->sp = cfa;
    w->bp = bp;
    w->regs_valid = 0;
    w->exact_pc = 0;
    return ra != 0;
}

/* Hand the walk to the walk program (registers read). Returns only when it cannot
 * start: the process's mappings are not known yet, or the tail call failed; the
 * stack is then the leaf and a marker. */
static __always_inline void walk_start(void *ctx, struct walk_state *w)
{
    if (proc_maps.lookup(&w->tgid)) {
        walk_progs.call(ctx, 0);
        stat_add(STAT_WALK_TAIL_CALL); /* reached only when the tail call failed */
    } else {
        stat_add(STAT_WALK_NO_PROCESS);
    }
    push(w, w->ip);
    push(w, MARKER_LOADING);
}

/* In the walk program: up to FRAMES_PER_CALL frames, then the walk program again.
 * Returns when the walk is over (or the tail call failed: the stack so far is kept). */
static __always_inline void walk_some(void *ctx, struct walk_state *w)
{
    struct proc_mappings *pm = proc_maps.lookup(&w->tgid);
    if (!pm)
        return; /* removed since the walk started: keep what was walked */
    for (int i = 0; i < FRAMES_PER_CALL; i++) {
        if (!walk_frame(w, pm))
            return;
    }
    if (w->calls >= MAX_WALK_CALLS)
        return;
    w->calls++;
    walk_progs.call(ctx, 0);
    stat_add(STAT_WALK_TAIL_CALL); /* reached only when the tail call failed */
}

/* Store the walked stack; its key in user_stacks, 0 when there is none. */
static __always_inline u64 store_user_stack(struct walk_state *w)
{
    u32 n = w->stack.len;
    if (n == 0)
        return 0;
    u64 h = 0x9E3779B97F4A7C15ULL ^ n;
#pragma clang loop unroll(disable)
    for (u32 i = 0; i <= MAX_FRAMES; i++) {
        if (i >= n)
            break;
        h = (h ^ w->stack.ips[i & MAX_FRAMES]) * 0xFF51AFD7ED558CCDULL;
        h ^= h >> 32;
    }
    h |= 1; /* 0 means "no user stack" */
    int err = user_stacks.insert(&h, &w->stack);
    if (err != 0 && err != -EEXIST) {
        stat_add(STAT_USER_STACKS_FULL);
        return 0;
    }
    return h;
}
