/* Network observation (network.c): the records and events user space reads.
 *
 * rover/bpf/contract.py reads the defines, enums and structs of this file, and
 * rover/network/observer.py decodes the maps and the ring buffer's events with
 * them: change a layout here and Python follows. The comment after each counter
 * is "name: meaning" ("name (info): meaning" for those that count no loss).
 *
 * Everything here comes from tracepoint records and user memory: no kernel struct
 * is ever read (the kernel's headers may not match the running kernel).
 */
#pragma once

#define NET_BUCKETS 34   /* layer-4 histogram buckets (spec 8.6) */
#define NET_PREFIX 16    /* payload bytes looked at to detect the protocol */
#define NET_PID_SLOTS 16384 /* pid_slots: watched pids per (pid & (NET_PID_SLOTS - 1)) */
#define NET_MMSG_MAX 8   /* messages of a sendmmsg/recvmmsg whose lengths are summed */

enum net_fd_kind {
    FD_INET = 1,    /* an IPv4/IPv6 socket: traced */
    FD_OTHER = 2,   /* anything else (files, pipes, AF_UNIX sockets): not traced */
    FD_PENDING = 3, /* reported to user space, which writes its verdict */
};

enum net_role {
    ROLE_UNKNOWN = 0,
    ROLE_CLIENT = 1,
    ROLE_SERVER = 2,
};

enum net_protocol {
    PROTO_UNKNOWN = 0,
    PROTO_HTTP1 = 1,
    PROTO_HTTP2 = 2,
};

/* The syscall of a data event (and of a thread's call in flight). */
enum net_call {
    CALL_WRITE = 1,
    CALL_WRITEV = 2,
    CALL_SENDTO = 3,
    CALL_SENDMSG = 4,
    CALL_SENDMMSG = 5,
    CALL_SENDFILE = 6,
    CALL_READ = 7,
    CALL_READV = 8,
    CALL_RECVFROM = 9,
    CALL_RECVMSG = 10,
    CALL_RECVMMSG = 11,
    CALL_SSL_WRITE = 12, /* SSL_write / SSL_write_ex: plaintext (a data event only) */
    CALL_SSL_READ = 13,  /* SSL_read / SSL_read_ex */
    CALL_SOCKET = 20,
    CALL_CONNECT = 21,
    CALL_ACCEPT = 22,
    CALL_CLOSE = 23,
};

enum net_event_kind {
    EVENT_DATA = 1,       /* struct data_event: a data call on an HTTP/1 connection */
    EVENT_CLOSE = 2,      /* struct close_event: a connection closed, its final counters */
    EVENT_RETRANSMIT = 3, /* struct retransmit_event: a TCP retransmission */
    EVENT_FD_UNKNOWN = 4, /* struct fd_event: what is this fd? (user space answers in fd_kinds) */
};

enum net_stat {
    NET_STAT_DATA_CALLS = 0,  /* data_calls (info): data calls counted on connections */
    NET_STAT_DATA_EVENTS,     /* data_events (info): data events sent (HTTP/1 connections) */
    NET_STAT_CONNECTS,        /* connects (info): connections made by connect() */
    NET_STAT_ACCEPTS,         /* accepts (info): connections made by accept()/accept4() */
    NET_STAT_CLOSES,          /* closes (info): connections closed */
    NET_STAT_UNKNOWN_ROLE,    /* unknown_role_connections (info): connections first seen at a data call */
    NET_STAT_RETRANSMITS,     /* retransmits (info): TCP retransmissions seen (any process) */
    NET_STAT_RTT_SAMPLES,     /* rtt_samples (info): RTT samples added to a call in flight */
    NET_STAT_FD_REQUESTS,     /* fd_requests (info): unknown fds reported to user space */
    NET_STAT_FD_UNRESOLVED,   /* fd_unresolved_calls: calls on an fd user space had not classified yet: not counted */
    NET_STAT_CONNS_FULL,      /* conns_map_full: a connection not recorded, the connection map was full */
    NET_STAT_FDS_FULL,        /* fd_map_full: an fd not remembered, the fd map was full */
    NET_STAT_INFLIGHT_FULL,   /* inflight_map_full: a call not followed, the per-thread map was full */
    NET_STAT_DROP_DATA,       /* dropped_data_events: a data event lost, the ring buffer was full */
    NET_STAT_DROP_CLOSE,      /* dropped_close_events: a close event lost, the ring buffer was full */
    NET_STAT_DROP_RETRANSMIT, /* dropped_retransmit_events: a retransmission lost, the ring buffer was full */
    NET_STAT_DROP_FD,         /* dropped_fd_requests: an fd request lost, the ring buffer was full (asked again) */
    NET_STAT_CAPTURE_FAILED,  /* capture_failed: a payload could not be read from user memory */
    NET_STAT_SSL_CALLS,       /* tls_calls (info): TLS library reads and writes that moved plaintext */
    NET_STAT_SSL_NESTED,      /* tls_syscalls (info): data calls made inside a TLS call (ciphertext: counted, not captured) */
    NET_STAT_SSL_NO_CONN,     /* tls_unknown_connection: TLS plaintext lost, its connection was not known */
    NET_STAT_SSL_LEARNED,     /* tls_connections_learned (info): TLS objects tied to a connection by a nested call */
    NET_STAT_COUNT
};

/* An address as the kernel gave it; IPv4 in addr[0..4]. family 0: unknown. */
struct net_addr {
    u16 family; /* AF_INET (2) or AF_INET6 (10) */
    u16 port;   /* host order */
    u32 pad;
    u8 addr[16];
};

/* One connection, in "conns" under (pid << 32 | fd). */
struct conn_rec {
    u64 conn_id;
    u32 pid;
    u32 fd;
    u32 role;     /* enum net_role */
    u32 protocol; /* enum net_protocol */
    u32 ssl;
    u32 pad;
    struct net_addr remote;
    struct net_addr local;
    u64 connect_ns;  /* duration of the connect/accept that made it; 0: not seen */
    u64 next_data_id;
    u64 write_count;
    u64 write_bytes;
    u64 write_ns;
    u64 read_count;
    u64 read_bytes;
    u64 read_ns;
    u64 rtt_count;
    u64 rtt_sum_us;
    u32 write_hist[NET_BUCKETS];
    u32 read_hist[NET_BUCKETS];
    u32 rtt_hist[NET_BUCKETS];
    u64 start_bytes[2]; /* send, receive: the first bytes of the stream, for detection */
    u32 start_len[2];   /* how many of them (at most 8) */
};

/* In "ssl_conns": a TLS library object (SSL *) of a process -> its connection's key. */
struct ssl_key {
    u64 ssl;
    u32 pid;
    u32 pad;
};

/* The first bytes of every event: which struct follows. */
struct event_header {
    u32 kind; /* enum net_event_kind */
    u32 pad;
};

/* EVENT_DATA, followed by "captured" payload bytes. */
struct data_event {
    u32 kind;
    u32 pid;
    u32 tid;
    u32 fd;
    u64 conn_id;
    u64 data_id;
    u32 call;      /* enum net_call */
    u32 direction; /* 1 send, 2 receive */
    u64 start_ns;
    u64 end_ns;
    u64 size;      /* bytes the call transferred */
    u32 captured;  /* payload bytes that follow */
    u32 ssl;
    u64 rtt_count;
    u64 rtt_sum_us;
};

/* EVENT_CLOSE. */
struct close_event {
    u32 kind;
    u32 pad;
    u64 close_ns;  /* duration of the close() */
    u64 closed_at; /* its end, CLOCK_MONOTONIC */
    struct conn_rec conn;
};

/* EVENT_RETRANSMIT (no process: it happens in the kernel's timers). */
struct retransmit_event {
    u32 kind;
    u32 state;
    u64 at_ns;
    struct net_addr local;
    struct net_addr remote;
};

/* EVENT_FD_UNKNOWN. */
struct fd_event {
    u32 kind;
    u32 pid;
    u32 fd;
    u32 pad;
};
