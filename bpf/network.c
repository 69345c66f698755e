/* Network observation on tracepoints only (no kprobes): connections of watched
 * processes, their layer-4 counters, and the payload of HTTP/1 data calls.
 *
 * Every syscall tracepoint checks the pid filter ("pids") before anything else.
 * - Which fds are sockets: "fd_kinds" (pid << 32 | fd -> enum net_fd_kind), filled
 *   by socket/connect/accept exits and by user space (from /proc/PID/fd when a pid
 *   is added, and in answer to EVENT_FD_UNKNOWN for an fd never seen); cleared by
 *   close. A call on an fd not classified yet is not counted (fd_unresolved_calls).
 * - A thread's syscall in flight is kept in "inflight" (by pid_tgid) from its enter
 *   to its exit: arguments, start time, RTT samples seen meanwhile, and (connect)
 *   the local address sock:inet_sock_set_state gave when the SYN went out.
 * - One record per connection in "conns" (struct conn_rec): made by connect (client),
 *   accept (server) or the first data call (role unknown); its counters and
 *   histograms are cumulative; close sends it (EVENT_CLOSE) and deletes it.
 * - The protocol is looked for in the first NET_PREFIX bytes of each data call while
 *   unknown, and in the stream's first 8 bytes gathered over calls shorter than that
 *   (a request written a byte at a time); such calls are sent while the gathered bytes
 *   can still be an HTTP/1 start. Every counted data call of an HTTP/1 connection
 *   sends an EVENT_DATA with the first CAPTURE bytes of its first buffer.
 * - A connect's local address comes from sock:inet_sock_set_state (SYN_SENT, then
 *   the port as the socket leaves SYN_SENT); an accepted one's from user space.
 * - tcp:tcp_probe adds the socket's smoothed RTT (µs) to the call in flight of the
 *   current thread, as Rover does; tcp:tcp_retransmit_skb sends the 4-tuple.
 *
 * - TLS (OpenSSL SSL_read/SSL_write and their _ex variants, uprobes user space attaches
 *   per process): the plaintext of an HTTP/1 connection goes out as EVENT_DATA with
 *   call CALL_SSL_READ/CALL_SSL_WRITE and ssl set; the data calls the library makes
 *   inside (ciphertext) only count in the layer-4 counters and tell which connection
 *   the TLS call is on (spec 8.3 rule 2). The connection is marked ssl.
 *
 * -D flags set by user space: MAX_PIDS, MAX_CONNS, MAX_FDS, MAX_THREADS, CAPTURE
 * (a power of two), RINGBUF_PAGES, HAVE_SET_STATE, HAVE_TCP_PROBE, HAVE_RETRANSMIT.
 */
#include <uapi/linux/ptrace.h>
#include "network.h"

#define EINPROGRESS_ 115
#define AF_INET_ 2
#define AF_INET6_ 10
#define TCP_SYN_SENT_ 2
#define DIR_SEND 1
#define DIR_RECV 2

struct call_rec {
    u64 start_ns;
    u64 ptr;  /* buffer, iovec array, msghdr, mmsghdr array or sockaddr */
    u64 arg;  /* mmsg: vlen; socket: family; accept: the listening fd's kind;
               * connect: the socket's address (inet_sock_set_state), an opaque key */
    u32 fd;
    u32 call; /* enum net_call */
    u64 rtt_count;
    u64 rtt_sum_us;
    struct net_addr local; /* connect: from inet_sock_set_state */
};

struct data_scratch {
    struct data_event ev;
    u8 payload[CAPTURE];
};

BPF_HASH(pids, u32, u32, MAX_PIDS);
BPF_ARRAY(pid_slots, u32, NET_PID_SLOTS); /* a cheap first test: an array read, no hash */
BPF_HASH(fd_kinds, u64, u32, MAX_FDS);
BPF_HASH(conns, u64, struct conn_rec, MAX_CONNS);
BPF_HASH(inflight, u64, struct call_rec, MAX_THREADS);
BPF_TABLE("lru_hash", u64, u64, connecting, MAX_THREADS); /* sock address -> conns key */
BPF_ARRAY(blank_conn, struct conn_rec, 1); /* never written: the zeroed record */
BPF_PERCPU_ARRAY(scratch, struct data_scratch, 1);
BPF_PERCPU_ARRAY(stats, u64, NET_STAT_COUNT);
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);

static __always_inline void stat_add(int which)
{
    u64 *v = stats.lookup(&which);
    if (v)
        (*v)++;
}

static __always_inline u64 fd_key(u32 pid, u32 fd)
{
    return ((u64)pid << 32) | fd;
}

/* Every traced syscall of every process on the node asks this first: most are not
 * watched, and an array slot with no watched pid says so without the hash lookup. */
static __always_inline int watched(u32 pid)
{
    u32 slot = pid & (NET_PID_SLOTS - 1);
    u32 *count = pid_slots.lookup(&slot);
    if (!count || *count == 0)
        return 0;
    return pids.lookup(&pid) != 0;
}

/* Spec 8.6: the highest bucket whose bound is <= v; below the second bound the
 * first; from the second-to-last bound on, the last. */
static __always_inline u32 bucket_of(u64 v)
{
    if (v < 1000000ULL) {
        if (v < 10000ULL) return 0;
        if (v < 50000ULL) return 1;
        if (v < 100000ULL) return 2;
        if (v < 500000ULL) return 3;
        return 4;
    }
    if (v < 10000000ULL) {
        if (v < 1200000ULL) return 5;
        if (v < 1500000ULL) return 6;
        if (v < 1700000ULL) return 7;
        if (v < 2000000ULL) return 8;
        if (v < 2500000ULL) return 9;
        if (v < 3000000ULL) return 10;
        if (v < 5000000ULL) return 11;
        if (v < 7000000ULL) return 12;
        return 13;
    }
    if (v < 50000000ULL) {
        if (v < 13000000ULL) return 14;
        if (v < 16000000ULL) return 15;
        if (v < 20000000ULL) return 16;
        if (v < 25000000ULL) return 17;
        if (v < 30000000ULL) return 18;
        if (v < 35000000ULL) return 19;
        if (v < 40000000ULL) return 20;
        if (v < 45000000ULL) return 21;
        return 22;
    }
    if (v < 70000000ULL) return 23;
    if (v < 100000000ULL) return 24;
    if (v < 150000000ULL) return 25;
    if (v < 200000000ULL) return 26;
    if (v < 300000000ULL) return 27;
    if (v < 500000000ULL) return 28;
    if (v < 1000000000ULL) return 29;
    if (v < 2000000000ULL) return 30;
    if (v < 3000000000ULL) return 31;
    return 33;
}

static __always_inline void hist_add(u32 *hist, u64 v)
{
    u32 i = bucket_of(v);
    if (i >= NET_BUCKETS)
        i = NET_BUCKETS - 1;
    __sync_fetch_and_add(&hist[i], 1);
}

/* Ask user space what fd is (once: the fd is pending until it answers). */
static __always_inline void ask_fd(u32 pid, u32 fd)
{
    u64 key = fd_key(pid, fd);
    u32 pending = FD_PENDING;
    if (fd_kinds.insert(&key, &pending) != 0)
        return; /* asked already (or the map is full: asked again next time) */
    struct fd_event ev = {.kind = EVENT_FD_UNKNOWN, .pid = pid, .fd = fd};
    if (events.ringbuf_output(&ev, sizeof(ev), 0) != 0) {
        stat_add(NET_STAT_DROP_FD);
        fd_kinds.delete(&key);
        return;
    }
    stat_add(NET_STAT_FD_REQUESTS);
}

static __always_inline void set_fd_kind(u64 key, u32 kind)
{
    if (fd_kinds.update(&key, &kind) != 0)
        stat_add(NET_STAT_FDS_FULL);
}

/* A new record for (pid, fd), replacing any: zeroed, a new id. */
static __always_inline struct conn_rec *new_conn(u64 key, u32 pid, u32 fd, u32 role)
{
    u32 zero = 0;
    struct conn_rec *blank = blank_conn.lookup(&zero);
    if (!blank)
        return 0;
    if (conns.update(&key, blank) != 0) {
        stat_add(NET_STAT_CONNS_FULL);
        return 0;
    }
    struct conn_rec *conn = conns.lookup(&key);
    if (!conn)
        return 0;
    conn->conn_id = ((u64)bpf_get_prandom_u32() << 32) | bpf_get_prandom_u32();
    conn->pid = pid;
    conn->fd = fd;
    conn->role = role;
    return conn;
}

static __always_inline struct conn_rec *conn_of(u32 pid, u32 fd)
{
    u64 key = fd_key(pid, fd);
    struct conn_rec *conn = conns.lookup(&key);
    if (conn)
        return conn;
    conn = new_conn(key, pid, fd, ROLE_UNKNOWN);
    if (conn)
        stat_add(NET_STAT_UNKNOWN_ROLE);
    return conn;
}

static __always_inline void save_call(u64 id, struct call_rec *rec)
{
    if (inflight.update(&id, rec) != 0)
        stat_add(NET_STAT_INFLIGHT_FULL);
}

/* sockaddr_in / sockaddr_in6 in user memory -> *out; the family (0 if unreadable). */
struct user_sockaddr {
    u16 family;
    u16 port; /* network order */
    u32 v4_or_flow;
    u8 v6[16];
    u32 scope;
};

static __always_inline u16 read_sockaddr(u64 ptr, struct net_addr *out)
{
    struct user_sockaddr sa = {};
    if (!ptr)
        return 0;
    if (bpf_probe_read_user(&sa, sizeof(sa), (void *)ptr) != 0 &&
        bpf_probe_read_user(&sa, 16, (void *)ptr) != 0)
        return 0;
    if (sa.family == AF_INET_) {
        out->family = AF_INET_;
        out->port = __builtin_bswap16(sa.port);
        __builtin_memcpy(out->addr, &sa.v4_or_flow, 4);
    } else if (sa.family == AF_INET6_) {
        out->family = AF_INET6_;
        out->port = __builtin_bswap16(sa.port);
        __builtin_memcpy(out->addr, sa.v6, 16);
    }
    return sa.family;
}

/* -- socket ------------------------------------------------------------------ */

TRACEPOINT_PROBE(syscalls, sys_enter_socket)
{
    u64 id = bpf_get_current_pid_tgid();
    if (!watched(id >> 32))
        return 0;
    struct call_rec rec = {.call = CALL_SOCKET, .arg = (u64)args->family};
    save_call(id, &rec);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_socket)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 pid = id >> 32;
    if (!watched(pid))
        return 0;
    struct call_rec *c = inflight.lookup(&id);
    if (!c)
        return 0;
    u64 family = c->arg;
    inflight.delete(&id);
    long ret = args->ret;
    if (ret < 0)
        return 0;
    u64 key = fd_key(pid, ret);
    conns.delete(&key); /* a record left by a close not seen */
    set_fd_kind(key, (family == AF_INET_ || family == AF_INET6_) ? FD_INET : FD_OTHER);
    return 0;
}

/* -- connect ------------------------------------------------------------------ */

TRACEPOINT_PROBE(syscalls, sys_enter_connect)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 pid = id >> 32;
    if (!watched(pid))
        return 0;
    /* Not skipped when the fd is FD_OTHER: an inet socket not bound yet is in no
     * /proc/PID/net table, so user space may have said "other"; the address decides. */
    u32 fd = args->fd;
    struct call_rec rec = {
        .start_ns = bpf_ktime_get_ns(),
        .ptr = (u64)args->uservaddr,
        .fd = fd,
        .call = CALL_CONNECT,
    };
    save_call(id, &rec);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_connect)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 pid = id >> 32;
    if (!watched(pid))
        return 0;
    struct call_rec *c = inflight.lookup(&id);
    if (!c || c->call != CALL_CONNECT)
        return 0;
    struct call_rec call = *c;
    inflight.delete(&id);
    long ret = args->ret;
    if (ret != 0 && ret != -EINPROGRESS_)
        return 0;
    u64 now = bpf_ktime_get_ns();
    struct net_addr remote = {};
    u16 family = read_sockaddr(call.ptr, &remote);
    u64 key = fd_key(pid, call.fd);
    if (family != AF_INET_ && family != AF_INET6_) {
        if (family != 0) /* AF_UNIX and the like; AF_UNSPEC (0) dissolves an association */
            set_fd_kind(key, FD_OTHER);
        return 0;
    }
    set_fd_kind(key, FD_INET);
    struct conn_rec *conn = new_conn(key, pid, call.fd, ROLE_CLIENT);
    if (!conn)
        return 0;
    conn->remote = remote;
    conn->local = call.local;
    conn->connect_ns = now - call.start_ns;
    stat_add(NET_STAT_CONNECTS);
    if (call.arg && call.local.port == 0) /* still in SYN_SENT: its port comes later */
        connecting.update(&call.arg, &key);
    return 0;
}

#ifdef HAVE_SET_STATE
/* The SYN goes out inside connect(), in the connecting thread: the local address,
 * but not its port yet (the kernel picks it just after). The port is read when the
 * socket leaves SYN_SENT: inside connect() (loopback) from the thread's call in
 * flight, later (another context) through "connecting", keyed by the socket's
 * address as an opaque number (never dereferenced). */
TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    u64 sk = (u64)args->skaddr;
    if (args->newstate == TCP_SYN_SENT_) {
        u64 id = bpf_get_current_pid_tgid();
        struct call_rec *c = inflight.lookup(&id);
        if (!c || c->call != CALL_CONNECT)
            return 0;
        c->arg = sk;
        c->local.family = args->family;
        c->local.port = args->sport;
        if (args->family == AF_INET_)
            bpf_probe_read_kernel(c->local.addr, 4, args->saddr);
        else
            bpf_probe_read_kernel(c->local.addr, 16, args->saddr_v6);
        return 0;
    }
    if (args->oldstate != TCP_SYN_SENT_)
        return 0;
    u16 sport = args->sport;
    u64 *key = connecting.lookup(&sk);
    if (key) {
        struct conn_rec *conn = conns.lookup(key);
        if (conn && conn->local.port == 0)
            conn->local.port = sport;
        connecting.delete(&sk);
        return 0;
    }
    u64 id = bpf_get_current_pid_tgid();
    struct call_rec *c = inflight.lookup(&id);
    if (c && c->call == CALL_CONNECT && c->arg == sk)
        c->local.port = sport;
    return 0;
}
#endif

/* -- accept ------------------------------------------------------------------- */

static __always_inline int accept_enter(u32 fd, u64 sockaddr)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 pid = id >> 32;
    if (!watched(pid))
        return 0;
    u64 key = fd_key(pid, fd);
    u32 *kind = fd_kinds.lookup(&key);
    u32 listening = kind ? *kind : 0;
    if (listening == FD_OTHER)
        return 0;
    struct call_rec rec = {
        .start_ns = bpf_ktime_get_ns(),
        .ptr = sockaddr,
        .arg = listening,
        .fd = fd,
        .call = CALL_ACCEPT,
    };
    save_call(id, &rec);
    return 0;
}

static __always_inline int accept_exit(long ret)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 pid = id >> 32;
    if (!watched(pid))
        return 0;
    struct call_rec *c = inflight.lookup(&id);
    if (!c || c->call != CALL_ACCEPT) {
        if (!c && ret >= 0) /* entered before the pid was watched: a socket, of what family? */
            ask_fd(pid, ret);
        return 0;
    }
    struct call_rec call = *c;
    inflight.delete(&id);
    if (ret < 0)
        return 0;
    u64 now = bpf_ktime_get_ns();
    u32 fd = ret;
    u64 key = fd_key(pid, fd);
    struct net_addr remote = {};
    u16 family = read_sockaddr(call.ptr, &remote);
    if (family != AF_INET_ && family != AF_INET6_) {
        if (call.arg != FD_INET) { /* nothing tells: ask user space */
            conns.delete(&key);
            fd_kinds.delete(&key);
            ask_fd(pid, fd);
            return 0;
        }
    }
    set_fd_kind(key, FD_INET);
    struct conn_rec *conn = new_conn(key, pid, fd, ROLE_SERVER);
    if (!conn)
        return 0;
    conn->remote = remote;
    conn->connect_ns = now - call.start_ns;
    stat_add(NET_STAT_ACCEPTS);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_accept)
{
    return accept_enter(args->fd, (u64)args->upeer_sockaddr);
}

TRACEPOINT_PROBE(syscalls, sys_exit_accept)
{
    return accept_exit(args->ret);
}

TRACEPOINT_PROBE(syscalls, sys_enter_accept4)
{
    return accept_enter(args->fd, (u64)args->upeer_sockaddr);
}

TRACEPOINT_PROBE(syscalls, sys_exit_accept4)
{
    return accept_exit(args->ret);
}

/* -- close -------------------------------------------------------------------- */

TRACEPOINT_PROBE(syscalls, sys_enter_close)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 pid = id >> 32;
    if (!watched(pid))
        return 0;
    u32 fd = args->fd;
    u64 key = fd_key(pid, fd);
    if (!fd_kinds.lookup(&key) && !conns.lookup(&key))
        return 0;
    struct call_rec rec = {.start_ns = bpf_ktime_get_ns(), .fd = fd, .call = CALL_CLOSE};
    save_call(id, &rec);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_close)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 pid = id >> 32;
    if (!watched(pid))
        return 0;
    struct call_rec *c = inflight.lookup(&id);
    if (!c || c->call != CALL_CLOSE)
        return 0;
    u64 start = c->start_ns;
    u32 fd = c->fd;
    inflight.delete(&id);
    u64 now = bpf_ktime_get_ns();
    u64 key = fd_key(pid, fd);
    fd_kinds.delete(&key);
    struct conn_rec *conn = conns.lookup(&key);
    if (!conn)
        return 0;
    stat_add(NET_STAT_CLOSES);
    struct close_event *ev = events.ringbuf_reserve(sizeof(struct close_event));
    if (!ev) {
        stat_add(NET_STAT_DROP_CLOSE);
    } else {
        ev->kind = EVENT_CLOSE;
        ev->pad = 0;
        ev->close_ns = now - start;
        ev->closed_at = now;
        bpf_probe_read_kernel(&ev->conn, sizeof(struct conn_rec), conn);
        events.ringbuf_submit(ev, 0);
    }
    conns.delete(&key);
    return 0;
}

/* -- TLS library calls (declarations; the probes follow the data calls) ------- */

/* A thread's SSL_read/SSL_write in flight, from its uprobe to its uretprobe. */
struct ssl_call {
    u64 start_ns;
    u64 ssl;      /* the SSL object */
    u64 buf;      /* plaintext buffer */
    u64 out;      /* _ex variants: where the library writes the byte count (size_t *) */
    u64 conn_key; /* the connection a nested data call showed; 0: none yet */
    u32 call;     /* CALL_SSL_WRITE or CALL_SSL_READ */
    u32 ex;
};

BPF_HASH(ssl_calls, u64, struct ssl_call, MAX_THREADS);
BPF_TABLE("lru_hash", struct ssl_key, u64, ssl_conns, MAX_CONNS);

/* A data call on "fd" ran inside the TLS call "tls": remember whose it is. */
static __always_inline void tls_learn(struct ssl_call *tls, u32 pid, u32 fd)
{
    u64 key = fd_key(pid, fd);
    if (tls->conn_key == key)
        return;
    tls->conn_key = key;
    struct ssl_key sk = {.ssl = tls->ssl, .pid = pid};
    u64 *known = ssl_conns.lookup(&sk);
    if (known && *known == key)
        return;
    ssl_conns.update(&sk, &key);
    stat_add(NET_STAT_SSL_LEARNED);
}

/* -- data calls --------------------------------------------------------------- */

static __always_inline int data_enter(u32 call, u32 fd, u64 ptr, u64 arg)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 pid = id >> 32;
    if (!watched(pid))
        return 0;
    u64 key = fd_key(pid, fd);
    u32 *kind = fd_kinds.lookup(&key);
    if (!kind) {
        stat_add(NET_STAT_FD_UNRESOLVED);
        ask_fd(pid, fd);
        return 0;
    }
    if (*kind != FD_INET) {
        if (*kind == FD_PENDING)
            stat_add(NET_STAT_FD_UNRESOLVED);
        return 0;
    }
    struct call_rec rec = {
        .start_ns = bpf_ktime_get_ns(),
        .ptr = ptr,
        .arg = arg,
        .fd = fd,
        .call = call,
    };
    save_call(id, &rec);
    return 0;
}

struct user_iovec {
    u64 base;
    u64 len;
};

/* The first buffer of the call's payload and its length (~0: the whole call). */
static __always_inline u64 first_buffer(struct call_rec *call, u64 *len)
{
    struct user_iovec iov = {};
    u64 vec = call->ptr;
    *len = ~0ULL;
    switch (call->call) {
    case CALL_WRITE:
    case CALL_READ:
    case CALL_SENDTO:
    case CALL_RECVFROM:
        return call->ptr;
    case CALL_SENDFILE:
        *len = 0;
        return 0;
    case CALL_SENDMSG:
    case CALL_RECVMSG:
    case CALL_SENDMMSG:
    case CALL_RECVMMSG: /* the first mmsghdr starts with its msghdr; msg_iov at 16 */
        if (bpf_probe_read_user(&vec, sizeof(vec), (void *)(call->ptr + 16)) != 0)
            return 0;
        break;
    default:
        break;
    }
    if (bpf_probe_read_user(&iov, sizeof(iov), (void *)vec) != 0)
        return 0;
    *len = iov.len;
    return iov.base;
}

#define B8(c, i) ((u64)(u8)(c) << (8 * (i)))
#define W4(a, b, c, d) (B8(a, 0) | B8(b, 1) | B8(c, 2) | B8(d, 3))
#define W8(a, b, c, d, e, f, g, h) (W4(a, b, c, d) | B8(e, 4) | B8(f, 5) | B8(g, 6) | B8(h, 7))
#define MASK(n) ((n) >= 8 ? ~0ULL : ((1ULL << (8 * (n))) - 1))
#define STARTS(w, n, value) ((avail) >= (n) && ((w) & MASK(n)) == (value))

static __always_inline u32 detect_protocol(u64 lo, u64 hi, u64 avail)
{
    if (STARTS(lo, 4, W4('G', 'E', 'T', ' ')) || STARTS(lo, 4, W4('P', 'U', 'T', ' ')) ||
        STARTS(lo, 5, W8('P', 'O', 'S', 'T', ' ', 0, 0, 0)) ||
        STARTS(lo, 5, W8('H', 'E', 'A', 'D', ' ', 0, 0, 0)) ||
        STARTS(lo, 5, W8('H', 'T', 'T', 'P', '/', 0, 0, 0)) ||
        STARTS(lo, 6, W8('T', 'R', 'A', 'C', 'E', ' ', 0, 0)) ||
        STARTS(lo, 6, W8('P', 'A', 'T', 'C', 'H', ' ', 0, 0)) ||
        STARTS(lo, 7, W8('D', 'E', 'L', 'E', 'T', 'E', ' ', 0)) ||
        STARTS(lo, 8, W8('O', 'P', 'T', 'I', 'O', 'N', 'S', ' ')) ||
        STARTS(lo, 8, W8('C', 'O', 'N', 'N', 'E', 'C', 'T', ' ')))
        return PROTO_HTTP1;
    if (avail >= 14 && lo == W8('P', 'R', 'I', ' ', '*', ' ', 'H', 'T') &&
        (hi & MASK(6)) == W8('T', 'P', '/', '2', '.', '0', 0, 0))
        return PROTO_HTTP2;
    return PROTO_UNKNOWN;
}

/* A message start written in calls of under 8 bytes ("G", "ET /", ...): the first bytes
 * of the direction's stream are gathered in the record (at most 8) and detected on
 * together. Only while every byte so far went there (the stream's very start). */
static __always_inline u32 detect_split(struct conn_rec *conn, u32 d, u64 buffer, u64 avail)
{
    d &= 1;
    u32 have = conn->start_len[d] & 7;
    u32 n = avail & 7; /* avail < 8 here */
    u64 bytes = 0;
    if (n == 0 || bpf_probe_read_user(&bytes, n, (void *)buffer) != 0)
        return PROTO_UNKNOWN;
    /* bytes past the 8th fall off the top of the word */
    u64 word = conn->start_bytes[d] | (bytes << (8 * have));
    u32 len = have + n > 8 ? 8 : have + n;
    conn->start_bytes[d] = word;
    conn->start_len[d] = len;
    return detect_protocol(word, 0, len);
}

/* Whether the first "len" bytes of a stream may still grow into an HTTP/1 start. */
#define COULD_BE(value) ((word & MASK(len)) == ((u64)(value) & MASK(len)))
static __always_inline int could_be_http(u64 word, u32 len)
{
    return COULD_BE(W4('G', 'E', 'T', ' ')) || COULD_BE(W4('P', 'U', 'T', ' ')) ||
           COULD_BE(W8('P', 'O', 'S', 'T', ' ', 0, 0, 0)) ||
           COULD_BE(W8('H', 'E', 'A', 'D', ' ', 0, 0, 0)) ||
           COULD_BE(W8('H', 'T', 'T', 'P', '/', 0, 0, 0)) ||
           COULD_BE(W8('T', 'R', 'A', 'C', 'E', ' ', 0, 0)) ||
           COULD_BE(W8('P', 'A', 'T', 'C', 'H', ' ', 0, 0)) ||
           COULD_BE(W8('D', 'E', 'L', 'E', 'T', 'E', ' ', 0)) ||
           COULD_BE(W8('O', 'P', 'T', 'I', 'O', 'N', 'S', ' ')) ||
           COULD_BE(W8('C', 'O', 'N', 'N', 'E', 'C', 'T', ' '));
}

/* Bytes a sendmmsg/recvmmsg moved: the msg_len of its first "count" messages. */
static __always_inline u64 mmsg_bytes(u64 vec, long count, u64 *first)
{
    u64 total = 0;
#pragma unroll
    for (int i = 0; i < NET_MMSG_MAX; i++) {
        if (i >= count)
            break;
        u32 len = 0;
        bpf_probe_read_user(&len, sizeof(len), (void *)(vec + i * 64 + 56));
        if (i == 0)
            *first = len;
        total += len;
    }
    return total;
}

static __always_inline void send_data(struct conn_rec *conn, struct call_rec *call, u32 tid,
                                      u64 now, u64 size, u64 buffer, u64 length, u32 direction)
{
    u32 zero = 0;
    struct data_scratch *s = scratch.lookup(&zero);
    if (!s)
        return;
    u64 n = length < size ? length : size;
    if (n > CAPTURE)
        n = CAPTURE;
    if (!buffer)
        n = 0;
    s->ev.kind = EVENT_DATA;
    s->ev.pid = conn->pid;
    s->ev.tid = tid;
    s->ev.fd = conn->fd;
    s->ev.conn_id = conn->conn_id;
    s->ev.data_id = __sync_fetch_and_add(&conn->next_data_id, 1);
    s->ev.call = call->call;
    s->ev.direction = direction;
    s->ev.start_ns = call->start_ns;
    s->ev.end_ns = now;
    s->ev.size = size;
    s->ev.ssl = conn->ssl;
    s->ev.rtt_count = call->rtt_count;
    s->ev.rtt_sum_us = call->rtt_sum_us;
    if (n > 0 && bpf_probe_read_user(s->payload, n, (void *)buffer) != 0) {
        stat_add(NET_STAT_CAPTURE_FAILED);
        n = 0;
    }
    s->ev.captured = n;
    if (events.ringbuf_output(s, sizeof(struct data_event) + n, 0) != 0)
        stat_add(NET_STAT_DROP_DATA);
    else
        stat_add(NET_STAT_DATA_EVENTS);
}

static __always_inline int data_exit(long ret)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 pid = id >> 32;
    if (!watched(pid))
        return 0;
    struct call_rec *c = inflight.lookup(&id);
    if (!c || c->call > CALL_RECVMMSG)
        return 0;
    struct call_rec call = *c;
    inflight.delete(&id);
    /* Inside a TLS library call: this fd is that call's connection. */
    struct ssl_call *tls = ssl_calls.lookup(&id);
    if (tls)
        tls_learn(tls, pid, call.fd);
    if (ret <= 0)
        return 0;
    u64 now = bpf_ktime_get_ns();
    u64 ns = now - call.start_ns;
    struct conn_rec *conn = conn_of(pid, call.fd);
    if (!conn)
        return 0;

    u64 size = ret;
    u64 first_len = 0;
    u64 length = 0;
    u64 buffer = first_buffer(&call, &length);
    if (call.call == CALL_SENDMMSG || call.call == CALL_RECVMMSG) {
        size = mmsg_bytes(call.ptr, ret, &first_len);
        if (first_len < length)
            length = first_len;
    }
    u32 direction = call.call <= CALL_SENDFILE ? DIR_SEND : DIR_RECV;
    if (direction == DIR_SEND) {
        __sync_fetch_and_add(&conn->write_count, 1);
        __sync_fetch_and_add(&conn->write_bytes, size);
        __sync_fetch_and_add(&conn->write_ns, ns);
        hist_add(conn->write_hist, ns);
    } else {
        __sync_fetch_and_add(&conn->read_count, 1);
        __sync_fetch_and_add(&conn->read_bytes, size);
        __sync_fetch_and_add(&conn->read_ns, ns);
        hist_add(conn->read_hist, ns);
    }
    stat_add(NET_STAT_DATA_CALLS);

    if (tls) { /* ciphertext: counted above (spec 8.3 rule 2), never captured nor detected */
        conn->ssl = 1;
        stat_add(NET_STAT_SSL_NESTED);
        return 0;
    }
    if (conn->ssl) /* ciphertext outside a TLS read/write: handshakes, alerts */
        return 0;
    int split = 0;
    if (conn->protocol == PROTO_UNKNOWN && buffer) {
        u64 avail = length < size ? length : size;
        u64 head[2] = {};
        if (avail >= 8 && bpf_probe_read_user(head, sizeof(head), (void *)buffer) == 0)
            conn->protocol = detect_protocol(head[0], head[1], avail);
        u32 d = direction == DIR_SEND ? 0 : 1;
        u64 before = (d == 0 ? conn->write_bytes : conn->read_bytes) - size;
        if (conn->protocol == PROTO_UNKNOWN && avail < 8 && before == conn->start_len[d] &&
            before < 8) {
            conn->protocol = detect_split(conn, d, buffer, avail);
            split = could_be_http(conn->start_bytes[d], conn->start_len[d]);
        }
    }
    /* the calls of a split start go out while the protocol is still unknown, so that the
     * parser has every byte of the first message once it is known */
    if (conn->protocol == PROTO_HTTP1 || split)
        send_data(conn, &call, id, now, size, buffer, length, direction);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_write)
{
    return data_enter(CALL_WRITE, args->fd, (u64)args->buf, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_write) { return data_exit(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_read)
{
    return data_enter(CALL_READ, args->fd, (u64)args->buf, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_read) { return data_exit(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_writev)
{
    return data_enter(CALL_WRITEV, args->fd, (u64)args->vec, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_writev) { return data_exit(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_readv)
{
    return data_enter(CALL_READV, args->fd, (u64)args->vec, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_readv) { return data_exit(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_sendto)
{
    return data_enter(CALL_SENDTO, args->fd, (u64)args->buff, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_sendto) { return data_exit(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_recvfrom)
{
    return data_enter(CALL_RECVFROM, args->fd, (u64)args->ubuf, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_recvfrom) { return data_exit(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_sendmsg)
{
    return data_enter(CALL_SENDMSG, args->fd, (u64)args->msg, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_sendmsg) { return data_exit(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_recvmsg)
{
    return data_enter(CALL_RECVMSG, args->fd, (u64)args->msg, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_recvmsg) { return data_exit(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_sendmmsg)
{
    return data_enter(CALL_SENDMMSG, args->fd, (u64)args->mmsg, args->vlen);
}
TRACEPOINT_PROBE(syscalls, sys_exit_sendmmsg) { return data_exit(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_recvmmsg)
{
    return data_enter(CALL_RECVMMSG, args->fd, (u64)args->mmsg, args->vlen);
}
TRACEPOINT_PROBE(syscalls, sys_exit_recvmmsg) { return data_exit(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_sendfile64)
{
    return data_enter(CALL_SENDFILE, args->out_fd, 0, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_sendfile64) { return data_exit(args->ret); }

/* -- TLS plaintext: OpenSSL SSL_read/SSL_write (and _ex) uprobes -------------- *
 * SSL_write(ssl, buf, num) / SSL_read(ssl, buf, num) return the bytes moved (> 0);
 * SSL_write_ex(ssl, buf, num, size_t *written) / SSL_read_ex(..., size_t *readbytes)
 * return 1 and store the count. No SSL struct is read: the connection is the fd of a
 * data call the library makes inside the call (ssl_calls.conn_key), or the one such a
 * call showed before for the same SSL object (ssl_conns: data already buffered). */

static __always_inline int ssl_enter(struct pt_regs *ctx, u32 call, u32 ex)
{
    u64 id = bpf_get_current_pid_tgid();
    if (!watched(id >> 32))
        return 0;
    struct ssl_call rec = {
        .start_ns = bpf_ktime_get_ns(),
        .ssl = PT_REGS_PARM1(ctx),
        .buf = PT_REGS_PARM2(ctx),
        .out = ex ? PT_REGS_PARM4(ctx) : 0,
        .call = call,
        .ex = ex,
    };
    if (ssl_calls.update(&id, &rec) != 0)
        stat_add(NET_STAT_INFLIGHT_FULL);
    return 0;
}

static __always_inline int ssl_exit(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 pid = id >> 32;
    struct ssl_call *c = ssl_calls.lookup(&id);
    if (!c)
        return 0;
    struct ssl_call call = *c;
    ssl_calls.delete(&id);
    if (!watched(pid))
        return 0;
    long ret = PT_REGS_RC(ctx);
    u64 size = 0;
    if (call.ex) {
        if (ret != 1 || !call.out)
            return 0;
        if (bpf_probe_read_user(&size, sizeof(size), (void *)call.out) != 0)
            return 0;
    } else {
        if (ret <= 0)
            return 0;
        size = ret;
    }
    if (size == 0)
        return 0;
    stat_add(NET_STAT_SSL_CALLS);
    u64 key = call.conn_key;
    if (!key) {
        struct ssl_key sk = {.ssl = call.ssl, .pid = pid};
        u64 *known = ssl_conns.lookup(&sk);
        if (known)
            key = *known;
    }
    struct conn_rec *conn = key ? conns.lookup(&key) : 0;
    if (!conn) {
        stat_add(NET_STAT_SSL_NO_CONN);
        return 0;
    }
    conn->ssl = 1;
    if (conn->protocol == PROTO_UNKNOWN && call.buf) {
        u64 head[2] = {};
        if (bpf_probe_read_user(head, sizeof(head), (void *)call.buf) == 0)
            conn->protocol = detect_protocol(head[0], head[1], size);
    }
    if (conn->protocol == PROTO_HTTP1) {
        struct call_rec rec = {.start_ns = call.start_ns, .call = call.call};
        u32 direction = call.call == CALL_SSL_WRITE ? DIR_SEND : DIR_RECV;
        send_data(conn, &rec, id, bpf_ktime_get_ns(), size, call.buf, size, direction);
    }
    return 0;
}

int ssl_write_enter(struct pt_regs *ctx) { return ssl_enter(ctx, CALL_SSL_WRITE, 0); }
int ssl_read_enter(struct pt_regs *ctx) { return ssl_enter(ctx, CALL_SSL_READ, 0); }
int ssl_write_ex_enter(struct pt_regs *ctx) { return ssl_enter(ctx, CALL_SSL_WRITE, 1); }
int ssl_read_ex_enter(struct pt_regs *ctx) { return ssl_enter(ctx, CALL_SSL_READ, 1); }
int ssl_exit_probe(struct pt_regs *ctx) { return ssl_exit(ctx); }

/* -- RTT and retransmissions -------------------------------------------------- */

#ifdef HAVE_TCP_PROBE
/* The established-state receive path ran while this thread was in a data call:
 * one RTT sample for the call and its connection (spec 8.6: srtt, µs). */
TRACEPOINT_PROBE(tcp, tcp_probe)
{
    u64 id = bpf_get_current_pid_tgid();
    struct call_rec *c = inflight.lookup(&id);
    if (!c || c->call > CALL_RECVMMSG)
        return 0;
    u64 srtt = args->srtt;
    c->rtt_count += 1;
    c->rtt_sum_us += srtt;
    stat_add(NET_STAT_RTT_SAMPLES);
    struct conn_rec *conn = conn_of(id >> 32, c->fd);
    if (!conn)
        return 0;
    __sync_fetch_and_add(&conn->rtt_count, 1);
    __sync_fetch_and_add(&conn->rtt_sum_us, srtt);
    hist_add(conn->rtt_hist, srtt * 1000);
    return 0;
}
#endif

#ifdef HAVE_RETRANSMIT
TRACEPOINT_PROBE(tcp, tcp_retransmit_skb)
{
    stat_add(NET_STAT_RETRANSMITS);
    struct retransmit_event *ev = events.ringbuf_reserve(sizeof(struct retransmit_event));
    if (!ev) {
        stat_add(NET_STAT_DROP_RETRANSMIT);
        return 0;
    }
    __builtin_memset(ev, 0, sizeof(*ev));
    ev->kind = EVENT_RETRANSMIT;
    ev->state = args->state;
    ev->at_ns = bpf_ktime_get_ns();
    ev->local.family = args->family;
    ev->local.port = args->sport;
    ev->remote.family = args->family;
    ev->remote.port = args->dport;
    if (args->family == AF_INET_) {
        bpf_probe_read_kernel(ev->local.addr, 4, args->saddr);
        bpf_probe_read_kernel(ev->remote.addr, 4, args->daddr);
    } else {
        bpf_probe_read_kernel(ev->local.addr, 16, args->saddr_v6);
        bpf_probe_read_kernel(ev->remote.addr, 16, args->daddr_v6);
    }
    events.ringbuf_submit(ev, 0);
    return 0;
}
#endif
