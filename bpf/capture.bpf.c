// SPDX-License-Identifier: GPL-2.0
/* Protocol-neutral capture of the TCP conversations of traced processes.
 *
 * Every syscall of a traced process that moves bytes on a socket is seen at
 * enter (arguments stashed per thread) and at exit (bytes known). Per
 * connection (pid, fd) the bytes one side sends first (the request) and the
 * bytes that come back (the response) are gathered in an exchange slot; when
 * the exchange is over, the slot's header and only the bytes captured go to
 * the ring buffer as one record.
 *
 * Roles: a connection the process accepted is a server connection (requests
 * are read, responses written); one it connected is a client connection
 * (requests written, responses read). A connection found mid-way (inherited,
 * opened before obi started) takes its role from its first bytes.
 *
 * An exchange ends when its response is complete by its framing (HTTP/1.x:
 * Content-Length, the chunked terminator, no body), when the requester sends
 * again, when a server goes back to reading, or when the connection closes
 * (close(), or any TCP close the kernel does, process exit included). What
 * the kernel cannot frame ends after an idle time, and an unanswered HTTP
 * request after ebpf.http_request_timeout: the sweep program, which user
 * space runs every tick with one read(), walks the slots in the kernel.
 *
 * Four sets of syscall entry points share the logic: fentry/fexit on the
 * syscall functions (fx_*, BPF trampolines), kprobes on them (kp_*), classic
 * syscall tracepoints (tp_*, need tracefs) and raw_tracepoint sys_enter/sys_exit
 * (raw_*, need nothing, but run for every syscall). Process and socket events
 * (common_*) always use raw tracepoints. User space autoloads one syscall set:
 * the cheapest this kernel lets it attach.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

#include "bounds.h"
#include "capture.h"
#include "http1.h"
#include "syscall_nr.h"

char LICENSE[] SEC("license") = "GPL";

#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define EINPROGRESS 115
#define MSG_PEEK 2
#define PF_EXITING 0x00000004
#define TCP_FIN_WAIT1 4
#define TCP_CLOSE 7
#define TCP_LAST_ACK 9
#define MAX_PID_NS_LEVEL 8
#define PATH_MAX_CAPTURE 256

#define DATA_CHUNK 512
#define DATA_OFF_MAX (OBI_REQ_CAPTURE_MAX + OBI_RESP_CAPTURE_MAX)
#define DATA_SIZE (DATA_OFF_MAX + DATA_CHUNK)
#define COPY_CHUNKS (OBI_REQ_CAPTURE_MAX / DATA_CHUNK)
#define NO_SLOT 0xffffffff

/* Set by user space between open and load. */
const volatile __u32 req_capture_len = 4096;
const volatile __u32 resp_capture_len = 512;
const volatile __u64 wakeup_bytes = 1;  /* wake user space once this much data waits */
const volatile __u64 pidns_dev = 0;     /* obi's pid namespace; 0 = the host's */
const volatile __u64 pidns_ino = 0;
const volatile __u32 trace_execs = 0;   /* trace every exec'd process until user space decides */
const volatile __u32 notice_processes = 0; /* tell user space when processes not traced listen */
const volatile __u32 use_bpf_loop = 0;  /* the kernel has bpf_loop (HTTP/1.x framing) */
const volatile __u32 propagate_headers = 0; /* traceparent headers in outgoing HTTP/1 requests */
const volatile __u32 propagate_tcp = 0;     /* the context in a TCP option of each request's first packet */

enum call_kind {
	CALL_READ = 1,  /* buf, len */
	CALL_READV,     /* iov, iovcnt */
	CALL_RECVMSG,   /* msghdr */
	CALL_WRITE,
	CALL_WRITEV,
	CALL_SENDMSG,
	CALL_SENDFILE,  /* no buffer */
	CALL_ACCEPT,
	CALL_CONNECT,
	CALL_PEEK,      /* recv(MSG_PEEK): the bytes stay in the socket, read again later */
};

enum conn_kind {
	CONN_TCP = 1,
	CONN_OTHER, /* not a TCP socket: remembered so that it is resolved once */
	CONN_TLS,   /* TLS ciphertext: not captured from syscalls */
};

/* Who ends an exchange is decided by one compare-and-swap on `busy`: the syscall
 * that ends it, the sweep and a TCP close can race on two CPUs, and only one may
 * emit it and give its slot back. */
enum slot_use {
	SLOT_FREE = 0,
	SLOT_BUSY,
	SLOT_ENDING,
};

enum phase {
	PHASE_REQUEST = 1,
	PHASE_RESPONSE,
	PHASE_COMPLETE, /* a server's response is complete; ends when it reads or the sweep runs */
};

enum framing {
	FRAMING_UNKNOWN = 0, /* not HTTP, or not framed yet: idle timeout */
	FRAMING_HEADERS,     /* HTTP status line seen, header block not ended yet */
	FRAMING_LENGTH,      /* complete at `expected` bytes */
	FRAMING_CHUNKED,     /* complete at the chunked terminator */
	FRAMING_CLOSE,       /* complete when the connection closes */
};

/* Arguments of a syscall in progress, by host pid_tgid. */
struct pending_call {
	__u32 kind;
	__u32 fd;
	__u64 ptr;
	__u64 count; /* iovcnt of readv/writev */
	__u32 pid;   /* the caller in obi's pid namespace */
	__u32 gen;   /* its pid_filter generation at enter */
};

/* What a file descriptor of a traced process is (value of `fds`). */
struct fd_info {
	__u64 sk;  /* struct sock * of a TCP socket (the key of `conns`), 0: not a TCP socket */
	__u32 gen; /* the process's pid_filter gen when resolved; another gen: resolve again */
	__u32 pad;
};

/* One TCP connection, whichever processes share it (value of `conns`, keyed by its sock). */
struct conn {
	__u32 slot;  /* the exchange in flight, or NO_SLOT */
	__u8 kind;   /* enum conn_kind */
	__u8 role;   /* OBI_ROLE_*, 0 until the first bytes of a connection found mid-way */
	__u8 flags;  /* OBI_FLAG_ROLE_GUESSED */
	__u8 shut;   /* the process shut its sending side down: FIN_WAIT1 is not a close */
	__u16 family;
	__u16 local_port;
	__u16 peer_port;
	__u16 pad2;
	__u8 local_addr[16];
	__u8 peer_addr[16];
};

struct slot_state {
	__u64 sk;      /* the connection (key of `conns`) */
	__u32 busy;    /* SLOT_FREE, SLOT_BUSY, SLOT_ENDING (changed with compare-and-swap) */
	__u8 phase;    /* enum phase */
	__u8 framing;  /* enum framing */
	__u8 interim;  /* the response so far is 1xx interim */
	__u8 status_only; /* the response in progress is captured as its status line only */
	__u64 last_ns; /* last bytes moved */
	__u64 expected;  /* FRAMING_LENGTH: resp_len at which the response is complete */
	__u64 tail;      /* the last 8 response bytes (newest on top), for the chunked terminator */
	__u32 segment;   /* resp_len where the current (pipelined) response began */
	__u32 seq;       /* a client's: the TCP sequence number of its request's first byte (0: TLS) */
	struct obi_ids ids; /* with OBI_FLAG_IDS: appended to the record */
	__u64 thread;       /* host pid_tgid of the thread that began it (a server's: `serving`) */
	__u32 peer_pending; /* a server's: its caller's ids (`peers`) not looked for yet */
	__u32 next_writes;  /* a client's: writes after its first that left its ids (leave_next_write) */
};

/* An exchange in flight: private state, then exactly the record that is emitted. */
struct slot {
	struct slot_state st;
	struct obi_exchange ev;
	__u8 data[DATA_SIZE];
};

struct scratch {
	__u8 buf[HTTP1_SCAN_BUF];
	__u32 pos; /* a line scan's position: in a map, so the verifier does not follow its
		    * value through every step of the loop (it cannot converge on a constant) */
	__u32 pad;
};



struct process_record {
	struct obi_process ev;
	char path[PATH_MAX_CAPTURE];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct obi_pid_info);
	__uint(max_entries, 4096);
} pid_filter SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u64);
	__type(value, struct pending_call);
	__uint(max_entries, 16384);
} pending_calls SEC(".maps");

/* (pid, fd) -> what the fd is, resolved once from the fd table. A cache: an entry
 * evicted is resolved again on the next call, so LRU: the descriptors of processes
 * that exit (or exec, or close_range) without close() are never used again, and go
 * first when it is full. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct obi_conn_key);
	__type(value, struct fd_info);
	__uint(max_entries, 65536);
} fds SEC(".maps");

/* struct sock * -> the connection: a fork's child and its parent share it, and it
 * ends when the socket closes, however that happens. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u64);
	__type(value, struct conn);
	__uint(max_entries, 65536);
} conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct slot);
	__uint(max_entries, 2048);
} slots SEC(".maps");

/* One bit per slot, set while it is in use: the sweep visits only those. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 32);
} busy_words SEC(".maps");

/* Indices of the unused slots; user space fills it before attaching. */
struct {
	__uint(type, BPF_MAP_TYPE_QUEUE);
	__type(value, __u32);
	__uint(max_entries, 2048);
} free_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct scratch);
	__uint(max_entries, 1);
} scratch SEC(".maps");

static __always_inline __u8 *http1_scratch(void)
{
	__u32 zero = 0;
	struct scratch *s = bpf_map_lookup_elem(&scratch, &zero);

	return s ? s->buf : NULL;
}

static __always_inline struct scratch *scan_scratch(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&scratch, &zero);
}

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct process_record);
	__uint(max_entries, 1);
} process_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, OBI_COUNTER_MAX);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct obi_sweep_ctl);
	__uint(max_entries, 1);
} sweep_ctl SEC(".maps");

/* What one thread is doing with a TLS library (value of `tls_threads`, by host pid_tgid). */
struct tls_thread {
	__u64 ssl;      /* the SSL * of the call in progress (0: none) */
	__u64 buf;      /* its buffer */
	__u64 out;      /* SSL_read_ex / SSL_write_ex: where the byte count goes */
	__u64 last_ssl; /* the last SSL * this thread passed to the library */
	__s32 last_fd;  /* the last TLS socket this thread read ciphertext from (-1: none) */
	__u32 op;       /* OBI_TLS_* of the call in progress */
};

/* Key of `tls_socks`: an SSL object of a process. */
struct tls_key {
	__u64 ssl;
	__u32 pid;
	__u32 pad;
};

/* Which socket an SSL object reads and writes. */
struct tls_bind {
	__u32 fd;
	__u32 seen; /* 1: a syscall made inside one of its calls said so; 0: guessed from the
		     * order of calls on the thread (TLS over memory BIOs, as in Node.js) */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, __u64);
	__type(value, struct tls_thread);
	__uint(max_entries, 16384);
} tls_threads SEC(".maps");

/* SSL objects are freed with SSL_free (the entry goes) or forgotten (LRU). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct tls_key);
	__type(value, struct tls_bind);
	__uint(max_entries, 65536);
} tls_socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 24);
} events SEC(".maps");

static __always_inline void count(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &slot);
	if (v)
		*v += 1;
}

static __always_inline __u64 wakeup_flag(__u64 size)
{
	/* Wake user space once, when this record makes wakeup_bytes wait: not again
	 * for every record after it while user space is busy (a wakeup costs more
	 * than the record). Its timer drains whatever is left. */
	__u64 pending = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	return pending < wakeup_bytes && pending + size >= wakeup_bytes ? BPF_RB_FORCE_WAKEUP
									   : BPF_RB_NO_WAKEUP;
}

/* The current process id as obi sees it. */
static __always_inline int current_pid(__u32 *pid)
{
	if (pidns_ino) {
		struct bpf_pidns_info ns = {};
		if (bpf_get_ns_current_pid_tgid(pidns_dev, pidns_ino, &ns, sizeof(ns)))
			return -1;
		*pid = ns.tgid;
	} else {
		*pid = bpf_get_current_pid_tgid() >> 32;
	}
	return 0;
}

/* The pid filter entry of the current process, or NULL when it is not traced. */
static __always_inline struct obi_pid_info *traced(__u32 *pid)
{
	if (current_pid(pid))
		return NULL;
	return bpf_map_lookup_elem(&pid_filter, pid);
}

/* A task's process id in obi's pid namespace (0 when it has none there). */
static __always_inline __u32 task_pid_in_ns(struct task_struct *task)
{
	struct pid *p;
	__u32 level;

	if (!pidns_ino)
		return BPF_CORE_READ(task, tgid);
	p = BPF_CORE_READ(task, thread_pid);
	if (!p)
		return 0;
	level = BPF_CORE_READ(p, level);
	for (int i = 0; i < MAX_PID_NS_LEVEL; i++) {
		struct upid upid = {};

		if (i > level)
			break;
		if (bpf_core_read(&upid, sizeof(upid), &p->numbers[i]))
			break;
		if (upid.ns && BPF_CORE_READ(upid.ns, ns.inum) == pidns_ino)
			return upid.nr;
	}
	return 0;
}

static __always_inline void emit_process(__u8 event, __u32 pid, __u32 parent, const char *path)
{
	__u32 zero = 0;
	struct process_record *r = bpf_map_lookup_elem(&process_scratch, &zero);
	__u64 size;
	long n = 0;

	if (!r)
		return;
	r->ev.kind = OBI_RECORD_PROCESS;
	r->ev.event = event;
	r->ev.pid = pid;
	r->ev.parent = parent;
	r->ev.pad = 0;
	r->ev.ts_ns = bpf_ktime_get_ns();
	if (path) {
		n = bpf_probe_read_kernel_str(r->path, sizeof(r->path), path);
		if (n > 0)
			n -= 1; /* without the NUL */
		else
			n = 0;
	}
	r->ev.path_len = n;
	size = sizeof(r->ev) + (__u64)n;
	clamp_umax(size, sizeof(*r));
	/* A first TLS connection (uprobes to attach before its next write), a new listener
	 * and an exec (a process to look at) cannot wait for user space's timer, which
	 * slows to a second when nothing comes: rare, they wake it now. Forks and exits
	 * ride along with the records (a fork-per-request server makes one per request). */
	if (bpf_ringbuf_output(&events, r, size,
			       event == OBI_PROCESS_FORK || event == OBI_PROCESS_EXIT ? wakeup_flag(size)
										: BPF_RB_FORCE_WAKEUP))
		count(OBI_COUNTER_PROCESS_EVENTS_LOST);
}

/* Resolves fd of the current task to its TCP socket, filling the addresses.
 * Returns the struct sock * of a TCP socket, 0 for anything else. */
static __always_inline __u64 read_socket(__u32 fd, struct conn *c)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds;
	struct file *file = NULL;
	struct socket *sock;
	struct sock *sk;
	__u16 mode;

	if (!fdt || fd >= BPF_CORE_READ(fdt, max_fds))
		return 0;
	fds = BPF_CORE_READ(fdt, fd);
	if (bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]) || !file)
		return 0;
	mode = BPF_CORE_READ(file, f_inode, i_mode);
	if ((mode & S_IFMT) != S_IFSOCK)
		return 0;
	sock = BPF_CORE_READ(file, private_data);
	if (!sock || BPF_CORE_READ(sock, type) != SOCK_STREAM)
		return 0;
	sk = BPF_CORE_READ(sock, sk);
	if (!sk)
		return 0;
	c->family = BPF_CORE_READ(sk, __sk_common.skc_family);
	c->local_port = BPF_CORE_READ(sk, __sk_common.skc_num);
	c->peer_port = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (c->family == AF_INET) {
		bpf_core_read(c->local_addr, 4, &sk->__sk_common.skc_rcv_saddr);
		bpf_core_read(c->peer_addr, 4, &sk->__sk_common.skc_daddr);
	} else if (c->family == AF_INET6) {
		bpf_core_read(c->local_addr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_core_read(c->peer_addr, 16, &sk->__sk_common.skc_v6_daddr);
	} else {
		return 0;
	}
	return (__u64)sk;
}

static __always_inline struct slot *slot_at(__u32 idx)
{
	if (idx == NO_SLOT)
		return NULL;
	return bpf_map_lookup_elem(&slots, &idx);
}

/* Sends the exchange of a slot to the ring buffer (header and captured bytes only). */
static __always_inline void emit_exchange(struct slot *s, __u8 reason)
{
	__u64 size = sizeof(s->ev) + (__u64)s->ev.req_captured + s->ev.resp_captured;

	s->ev.end_reason = reason;
	if (s->ev.flags & OBI_FLAG_IDS) {
		/* the ids go right after the captured bytes (the data area has room past them) */
		__u32 off = (__u32)s->ev.req_captured + s->ev.resp_captured;

		clamp_umax(off, DATA_OFF_MAX);
		__builtin_memcpy(s->data + off, &s->st.ids, sizeof(s->st.ids));
		size += sizeof(s->st.ids);
	}
	clamp_umax(size, sizeof(s->ev) + DATA_OFF_MAX + sizeof(struct obi_ids));
	if (bpf_ringbuf_output(&events, &s->ev, size, wakeup_flag(size)))
		count(OBI_COUNTER_EVENTS_LOST);
	else
		count(OBI_COUNTER_EXCHANGES);
}

static __always_inline void mark_busy(__u32 idx, bool busy)
{
	__u32 w = idx / 64;
	__u64 *word = bpf_map_lookup_elem(&busy_words, &w);

	if (!word)
		return;
	if (busy)
		__sync_fetch_and_or(word, 1ULL << (idx & 63));
	else
		__sync_fetch_and_and(word, ~(1ULL << (idx & 63)));
}

/* The request a thread serves (value of `serving`). An event loop serves several at once:
 * then which one a call is made for is not known, and none is its parent. */
struct served {
	__u32 slot;
	__u32 inflight; /* server exchanges this thread began that have not ended */
	__u64 start_ns; /* the exchange's, to tell it from a later one in the same slot */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, __u64); /* host pid_tgid */
	__type(value, struct served);
	__uint(max_entries, 16384);
} serving SEC(".maps");

/* Emits the exchange of slot idx (reason 0: drops it) and gives the slot back, unless
 * another CPU is doing so (a global function: one copy, verified once, whoever calls it). */
__noinline int end_slot(__u32 idx, __u32 reason)
{
	struct slot *s = slot_at(idx);
	struct conn *c;
	__u64 sk;

	if (!s || __sync_val_compare_and_swap(&s->st.busy, SLOT_BUSY, SLOT_ENDING) != SLOT_BUSY)
		return 0;
	sk = s->st.sk;
	if (s->ev.role == OBI_ROLE_SERVER) {
		struct served *v = bpf_map_lookup_elem(&serving, &s->st.thread);

		if (v && v->inflight)
			__sync_fetch_and_add(&v->inflight, -1);
	}
	if (reason)
		emit_exchange(s, s->st.phase == PHASE_COMPLETE ? OBI_END_FRAMED : reason);
	c = bpf_map_lookup_elem(&conns, &sk);
	if (c) /* unless the connection has moved on to a new exchange meanwhile */
		__sync_val_compare_and_swap(&c->slot, idx, NO_SLOT);
	s->st.busy = SLOT_FREE;
	mark_busy(idx, false);
	bpf_map_push_elem(&free_slots, &idx, BPF_ANY);
	return 0;
}

static __always_inline void end_exchange(struct conn *c, __u8 reason)
{
	__u32 idx = c->slot;

	if (idx != NO_SLOT)
		end_slot(idx, reason);
	if (c->slot == idx)
		c->slot = NO_SLOT; /* the slot was another's already: forget it */
}

/* Starts following a connection the process just accepted or connected, or one it
 * already had (role 0: decided by its first bytes). */
static __always_inline struct conn *track(struct obi_conn_key *key, __u32 gen, __u8 role, __u64 *sk)
{
	struct conn fresh = {};
	struct fd_info fi = {.gen = gen};
	struct conn *c;

	fi.sk = read_socket(key->fd, &fresh);
	if (bpf_map_update_elem(&fds, key, &fi, BPF_ANY)) {
		count(OBI_COUNTER_CONN_TABLE_FULL);
		return NULL;
	}
	*sk = fi.sk;
	if (!fi.sk)
		return NULL;
	c = bpf_map_lookup_elem(&conns, &fi.sk);
	if (c && !role)
		return c; /* a connection shared with a traced parent (fork) or another fd (dup) */
	if (c && c->slot != NO_SLOT)
		end_exchange(c, OBI_END_CLOSE); /* the sock was freed and reused without us seeing it */
	fresh.slot = NO_SLOT;
	fresh.kind = CONN_TCP;
	fresh.role = role;
	fresh.flags = role ? 0 : OBI_FLAG_ROLE_GUESSED;
	if (bpf_map_update_elem(&conns, &fi.sk, &fresh, BPF_ANY)) {
		count(OBI_COUNTER_CONN_TABLE_FULL);
		return NULL;
	}
	return bpf_map_lookup_elem(&conns, &fi.sk);
}

/* The connection behind a file descriptor of the process (NULL: not a TCP socket). */
static __always_inline struct conn *lookup_conn(struct obi_conn_key *key, __u32 gen, __u64 *sk)
{
	struct fd_info *fi = bpf_map_lookup_elem(&fds, key);

	if (!fi || fi->gen != gen)
		return NULL;
	*sk = fi->sk;
	return fi->sk ? bpf_map_lookup_elem(&conns, sk) : NULL;
}

/* lookup_conn, resolving a descriptor seen for the first time (or again after an exec). */
static __always_inline struct conn *conn_of(struct obi_conn_key *key, __u32 gen, __u64 *sk)
{
	struct fd_info *fi = bpf_map_lookup_elem(&fds, key);

	if (fi && fi->gen == gen) {
		*sk = fi->sk;
		return fi->sk ? bpf_map_lookup_elem(&conns, sk) : NULL;
	}
	return track(key, gen, 0, sk);
}

/* Where the bytes of a finished call are: the buffer, or the first iovec. */
static __always_inline __u64 call_buffer(struct pending_call *call, __u64 *room)
{
	struct iovec iov = {};
	struct user_msghdr msg = {};
	__u64 iov_ptr;

	switch (call->kind) {
	case CALL_READ:
	case CALL_WRITE:
		*room = ~0ULL;
		return call->ptr;
	case CALL_READV:
	case CALL_WRITEV:
		iov_ptr = call->ptr;
		break;
	case CALL_RECVMSG:
	case CALL_SENDMSG:
		if (bpf_probe_read_user(&msg, sizeof(msg), (void *)call->ptr))
			return 0;
		iov_ptr = (__u64)msg.msg_iov;
		call->count = msg.msg_iovlen;
		break;
	default:
		return 0;
	}
	if (bpf_probe_read_user(&iov, sizeof(iov), (void *)iov_ptr))
		return 0;
	*room = iov.iov_len;
	return (__u64)iov.iov_base;
}

/* Shifts the last up-to-8 bytes a call moved into *tail (the newest byte is the top one). */
static __always_inline void call_tail(struct pending_call *call, __u64 src, __u64 room, __u64 n, __u64 *tail)
{
	struct iovec iov = {};
	__u64 base = src, len = n < room ? n : room;
	__u64 fresh = 0;

	if (call->kind != CALL_READ && call->kind != CALL_WRITE && call->count > 1) {
		/* vectored: the stream ends in the last iovec (assumed moved whole) */
		__u64 iov_ptr = call->ptr;

		if (call->kind == CALL_RECVMSG || call->kind == CALL_SENDMSG) {
			struct user_msghdr msg = {};
			if (bpf_probe_read_user(&msg, sizeof(msg), (void *)call->ptr))
				return;
			iov_ptr = (__u64)msg.msg_iov;
		}
		if (call->count > 1024 ||
		    bpf_probe_read_user(&iov, sizeof(iov), (void *)(iov_ptr + (call->count - 1) * sizeof(iov))))
			return;
		base = (__u64)iov.iov_base;
		len = iov.iov_len;
	}
	if (!base || !len)
		return;
	if (len >= 8) {
		bpf_probe_read_user(tail, 8, (void *)(base + len - 8));
		return;
	}
	if (bpf_probe_read_user(&fresh, 8, (void *)base))
		return; /* fewer than 8 bytes near the end of a mapping, rarely: keep the old tail */
	fresh &= (1ULL << (len * 8)) - 1;
	*tail = (*tail >> (len * 8)) | (fresh << ((8 - len) * 8));
}

/* Copies want bytes from user memory to data + off in pieces the verifier can bound. */
static __always_inline __u32 copy_user(__u8 *data, __u32 off, __u32 want, __u64 src)
{
	__u32 done = 0;

	for (int i = 0; i < COPY_CHUNKS; i++) {
		__u32 n, o;

		if (done >= want)
			break;
		n = want - done;
		if (n > DATA_CHUNK)
			n = DATA_CHUNK;
		o = off + done;
		if (o >= DATA_OFF_MAX)
			break;
		clamp_umax(o, DATA_OFF_MAX - 1);
		clamp_umax(n, DATA_CHUNK);
		if (bpf_probe_read_user(data + o, n, (void *)(src + done)))
			break;
		done += n;
	}
	return done;
}

static __always_inline void capture_request(struct slot *s, __u64 src, __u64 n)
{
	__u32 cap = req_capture_len < OBI_REQ_CAPTURE_MAX ? req_capture_len : OBI_REQ_CAPTURE_MAX;
	__u32 off = s->ev.req_captured;

	/* request bytes stay contiguous: none once response bytes are captured */
	if (!src || off >= cap || s->ev.resp_captured)
		return;
	s->ev.req_captured = off + copy_user(s->data, off, n < cap - off ? n : cap - off, src);
}

static __always_inline void capture_response(struct slot *s, __u64 src, __u64 n)
{
	__u32 cap = resp_capture_len < OBI_RESP_CAPTURE_MAX ? resp_capture_len : OBI_RESP_CAPTURE_MAX;
	__u32 have = s->ev.resp_captured;
	__u32 off = s->ev.req_captured + have;

	if (!src || have >= cap)
		return;
	s->ev.resp_captured = have + copy_user(s->data, off, n < cap - have ? n : cap - have, src);
}

static __always_inline bool looks_like_tls(const __u8 *m)
{
	/* a TLS record header: content type 20..23, version 3.x */
	return m[0] >= 0x14 && m[0] <= 0x17 && m[1] == 0x03 && m[2] <= 0x04;
}

static __always_inline struct slot *start_exchange(struct conn *c, struct obi_conn_key *key, __u64 sk)
{
	__u32 idx;
	struct slot *s;

	if (bpf_map_pop_elem(&free_slots, &idx)) {
		count(OBI_COUNTER_SLOTS_FULL);
		return NULL;
	}
	s = bpf_map_lookup_elem(&slots, &idx);
	if (!s) {
		bpf_map_push_elem(&free_slots, &idx, BPF_ANY);
		return NULL;
	}
	s->st.sk = sk;
	s->st.phase = PHASE_REQUEST;
	s->st.framing = FRAMING_UNKNOWN;
	s->st.interim = 0;
	s->st.expected = 0;
	s->st.segment = 0;
	s->st.tail = 0;
	s->st.seq = 0;
	s->st.peer_pending = 0;
	s->st.next_writes = 0;
	s->ev.kind = OBI_RECORD_EXCHANGE;
	s->ev.role = c->role;
	s->ev.end_reason = 0;
	s->ev.flags = c->flags & OBI_FLAG_ROLE_GUESSED;
	if (c->kind == CONN_TLS) {
		s->ev.flags |= OBI_FLAG_TLS;
		count(OBI_COUNTER_TLS_EXCHANGES);
	}
	s->ev.pid = key->pid;
	s->ev.tid = (__u32)bpf_get_current_pid_tgid();
	s->ev.fd = key->fd;
	s->ev.family = c->family;
	s->ev.local_port = c->local_port;
	s->ev.peer_port = c->peer_port;
	s->ev.req_captured = 0;
	s->ev.resp_captured = 0;
	s->ev.pad = 0;
	s->ev.pad1 = 0;
	s->ev.start_ns = bpf_ktime_get_ns();
	s->ev.resp_start_ns = 0;
	s->ev.end_ns = s->ev.start_ns;
	s->ev.req_len = 0;
	s->ev.resp_len = 0;
	s->ev.resp_content_length = 0;
	s->ev.resp_header_len = 0;
	s->ev.pad2 = 0;
	__builtin_memcpy(s->ev.local_addr, c->local_addr, 16);
	__builtin_memcpy(s->ev.peer_addr, c->peer_addr, 16);
	s->st.last_ns = s->ev.start_ns;
	s->st.thread = bpf_get_current_pid_tgid();
	s->st.busy = SLOT_BUSY;
	c->slot = idx;
	mark_busy(idx, true);
	return s;
}

/* Frames the HTTP response that starts at src (the call's first buffer, room bytes of
 * it; n moved in all) for the exchange in slot idx. Sets framing, expected, interim,
 * and the record's length facts. Returns 1 when the status line is all user space
 * needs of it: the first final response of the exchange, framed by its Content-Length,
 * and this call moves nothing past it (no pipelined response in the same bytes). A
 * global function: verified once, on its own. */
__noinline int frame_http_response(__u32 idx, __u64 src, __u64 room, __u64 n)
{
	struct slot *s = bpf_map_lookup_elem(&slots, &idx);
	__u8 *buf;
	struct http1_scan scan = {};
	__u32 status, base = 0;
	__u64 len = n < room ? n : room;

	/* The status line is read into the scan's per-CPU buffer, not onto the stack (which the
	 * scan's callbacks below need: 512 bytes for the whole chain on kernels before private
	 * stacks); the scan copies the same bytes there again from offset 0. */
	buf = http1_scratch();
	/* a status line cut short (a server writing "HTTP/1.1 " first) is not framed */
	if (!s || !src || !buf || len < 13 || bpf_probe_read_user(buf, 16, (void *)src))
		return 0;
	status = http1_status(buf);
	if (!status)
		return 0; /* not a status line: framing stays unknown */
	s->st.framing = FRAMING_HEADERS;
	if (!use_bpf_loop)
		return 0;
	scan.src = src;
	scan.len = len < HTTP1_SCAN_MAX ? len : HTTP1_SCAN_MAX;
	scan.content_length = -1;
	bpf_loop(HTTP1_SCAN_STEPS, http1_step, &scan, 0);
	if (status < 200 && status != 101) {
		/* interim: is the final response in the same bytes? */
		if (!scan.header_end || scan.header_end + 16 > scan.avail ||
		    scan.header_end >= HTTP1_SCAN_MAX) {
			s->st.interim = 1;
			return 0;
		}
		base = scan.header_end;
		/* within the buffer: it has room past HTTP1_SCAN_MAX */
		status = http1_status(buf + (base & (HTTP1_SCAN_MAX - 1)));
		if (!status || status < 200) {
			s->st.interim = 1;
			return 0;
		}
		scan.src = src + base;
		scan.len = scan.len - base;
		scan.avail = 0;
		scan.pos = 0;
		scan.nl_mask = 0;
		scan.te_line = 0;
		scan.header_end = 0;
		scan.content_length = -1;
		scan.chunked = 0;
		bpf_loop(HTTP1_SCAN_STEPS, http1_step, &scan, 0);
	}
	s->st.interim = 0;
	if (!scan.header_end)
		return 0; /* the header block is longer than we scan, or split: idle fallback */
	if (s->st.segment == 0) {
		s->ev.resp_header_len = base + scan.header_end;
		if (scan.content_length >= 0) {
			s->ev.resp_content_length = scan.content_length;
			s->ev.flags |= OBI_FLAG_LENGTH_KNOWN;
		}
	}
	/* HEAD responses and 1xx/204/304 have no body whatever the headers say */
	if (status == 204 || status == 304 || status == 101 ||
	    (s->ev.req_captured >= 5 && s->data[0] == 'H' && s->data[1] == 'E' && s->data[2] == 'A' &&
	     s->data[3] == 'D' && s->data[4] == ' ')) {
		s->st.framing = FRAMING_LENGTH;
		s->st.expected = s->st.segment + base + scan.header_end;
	} else if (scan.chunked) {
		s->st.framing = FRAMING_CHUNKED;
		if (s->st.segment == 0)
			s->ev.flags |= OBI_FLAG_CHUNKED;
	} else if (scan.content_length >= 0) {
		s->st.framing = FRAMING_LENGTH;
		s->st.expected = s->st.segment + base + scan.header_end + scan.content_length;
	} else {
		s->st.framing = FRAMING_CLOSE;
	}
	return s->st.segment == 0 && base == 0 && s->st.framing == FRAMING_LENGTH &&
	       (s->ev.flags & OBI_FLAG_LENGTH_KNOWN) && status >= 200 && n <= s->st.expected;
}

/* Whether the response of s is complete by its framing, with the bytes moved so far. */
static __always_inline bool response_complete(struct slot *s)
{
	if (s->st.framing == FRAMING_LENGTH)
		return s->ev.resp_len >= s->st.expected;
	if (s->st.framing == FRAMING_CHUNKED)
		/* "\r\n0\r\n\r\n": the last chunk of a chunked body, without trailers */
		return (s->st.tail >> 8) == W8('\r', '\n', '0', '\r', '\n', '\r', '\n', 0);
	return false;
}

static __always_inline void link_to_peer(__u32 idx, struct slot *s);

/* Response bytes moved: start or continue the response, capture, and see if it is complete.
 * Returns true when the exchange should end now (a client's complete response). */
static __always_inline bool on_response_bytes(struct conn *c, struct slot *s, struct pending_call *call,
					      __u64 src, __u64 room, __u64 n)
{
	__u64 now = bpf_ktime_get_ns();
	bool fresh = false;

	if (s->st.phase == PHASE_REQUEST) {
		fresh = true;
		s->st.phase = PHASE_RESPONSE;
		s->ev.resp_start_ns = now;
		if (s->st.peer_pending) {
			/* the caller's ids, left by its end when it sent the request */
			s->st.peer_pending = 0;
			if (!(s->ev.flags & OBI_FLAG_IDS))
				link_to_peer(c->slot, s);
		}
		if (!(s->ev.flags & OBI_FLAG_HTTP) && s->ev.req_captured >= 5 && http1_is_request(s->data))
			s->ev.flags |= OBI_FLAG_HTTP;
	} else if (s->st.phase == PHASE_COMPLETE) {
		/* a pipelined next response of the same exchange */
		fresh = true;
		s->st.phase = PHASE_RESPONSE;
		s->st.segment = s->ev.resp_len;
	} else if (s->st.interim && src) {
		__u8 head[16] = {};
		if (bpf_probe_read_user(head, sizeof(head), (void *)src) == 0 && http1_status(head)) {
			/* the final response after a 1xx interim one: it alone counts */
			fresh = true;
			s->ev.resp_len = 0;
			s->ev.resp_captured = 0;
			s->ev.resp_start_ns = now;
		}
	}
	if (fresh) {
		s->st.status_only = 0;
		if (s->ev.flags & OBI_FLAG_HTTP)
			s->st.status_only = frame_http_response(c->slot, src, room, n);
		else
			s->st.framing = FRAMING_UNKNOWN;
		if (s->st.status_only) {
			/* the kernel knows its length: user space needs its status line alone */
			s->ev.flags |= OBI_FLAG_STATUS_ONLY;
			capture_response(s, src, OBI_STATUS_CAPTURE);
		}
	}
	if (!s->st.interim && !s->st.status_only)
		capture_response(s, src, n < room ? n : room);
	s->ev.resp_len += n;
	s->ev.end_ns = now;
	s->st.last_ns = now;
	if (s->st.framing == FRAMING_CHUNKED)
		call_tail(call, src, room, n, &s->st.tail);
	if (!s->st.interim && response_complete(s)) {
		if (c->role == OBI_ROLE_CLIENT)
			return true;
		s->st.phase = PHASE_COMPLETE; /* a server may still pipeline more: the sweep or its next read ends it */
	}
	return false;
}

/* ---- the request a thread serves, and the calls it makes for it ------------------
 *
 * When a server exchange starts, the thread that read the request is serving it
 * (`serving`, by thread). A client exchange started by that thread, or by a thread it
 * created since, is a call made for that request: the kernel gives both their span
 * ids then (the served request's only now, so a request that makes no call costs
 * nothing more), and both records carry them (OBI_FLAG_IDS).
 */

/* ---- the same call seen from both ends of a connection on this host ---------------
 *
 * A call's client exchange leaves its trace and span under the connection's addresses
 * and the TCP sequence number of the request's first byte (`peers`). When the process
 * at the other end is traced too, the server exchange that reads that byte takes them
 * as its parent, whatever order the two ends run in: exact on a keep-alive connection.
 * TLS plaintext has no sequence number of its own (0): there the first server
 * exchange on the connection that looks takes the entry.
 */
struct peer_key {
	__u8 client_addr[16];
	__u8 server_addr[16];
	__u16 client_port;
	__u16 server_port;
	__u32 seq;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(map_flags, BPF_F_NO_COMMON_LRU); /* one LRU list per CPU: no shared lock per call */
	__type(key, struct peer_key);
	__type(value, struct obi_ids); /* the call's trace and span */
	__uint(max_entries, 16384);
} peers SEC(".maps");

/* Server ports traced calls were made to (a bit per port): a server whose port has
 * none (called by untraced clients only, as most are) does not look for its caller. */
struct port_bits {
	__u64 words[1024];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct port_bits);
	__uint(max_entries, 1);
} called_ports SEC(".maps");

static __always_inline __u64 *port_word(__u16 port)
{
	__u32 zero = 0;
	struct port_bits *bits = bpf_map_lookup_elem(&called_ports, &zero);

	return bits ? &bits->words[(port >> 6) & 1023] : NULL;
}

static __always_inline void mark_called(__u16 port)
{
	__u64 *word = port_word(port), bit = 1ULL << (port & 63);

	if (word && !(*word & bit))
		__sync_fetch_and_or(word, bit);
}

static __always_inline bool was_called(__u16 port)
{
	__u64 *word = port_word(port);

	return word && (*word & (1ULL << (port & 63)));
}

/* Ids a call's client exchange takes when it starts on this thread: the ones the
 * traceparent header obi added to its request carries (sk_msg), or the Go call whose
 * request this thread is writing (net/http.(*Request).write). */
struct thread_ids {
	__u64 sk;     /* the connection (0: whichever the thread writes next, for Go) */
	__u64 ts_ns;  /* when they were made: older than THREAD_IDS_TTL_NS, unused */
	__u32 seq;    /* sk's: the TCP sequence number of the request's first byte */
	__u32 pad;
	struct obi_ids ids;
};

#define THREAD_IDS_TTL_NS 100000000ULL

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, __u64); /* host pid_tgid */
	__type(value, struct thread_ids);
	__uint(max_entries, 16384);
} thread_ids SEC(".maps");

/* ---- the context in a TCP header option (ebpf.context_propagation: tcp, all) ------
 *
 * The first packet of each request a traced process sends on a connection (TLS too,
 * where no header can be written) carries its call's trace and span in an experimental
 * TCP option (kind 254, RFC 6994, obi's 2-byte magic): kind, length, magic, 16 + 8 bytes.
 * The receiving end, traced by obi on its own host, keeps the last one that came on the
 * connection; its server exchange takes it as its parent. */
#define TCP_OPT_KIND 254
#define TCP_OPT_MAGIC0 0x0b
#define TCP_OPT_MAGIC1 0x1e
#define TCP_OPT_LEN 28

struct tcp_ctx {
	struct obi_ids ids; /* the trace and span (parent_span_id unused) */
	__u32 pending;      /* (to send) the next data packet carries it */
	__u32 pad;
};

/* struct sock * -> the context its next request's first packet carries */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, __u64);
	__type(value, struct tcp_ctx);
	__uint(max_entries, 16384);
} tcp_ctx_out SEC(".maps");

/* struct sock * -> the context that came with the last request on it */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, __u64);
	__type(value, struct tcp_ctx);
	__uint(max_entries, 16384);
} tcp_ctx_in SEC(".maps");

static __always_inline void tcp_ctx_send(__u64 sk, struct obi_ids *ids)
{
	struct tcp_ctx out = {.ids = *ids, .pending = 1};

	if (propagate_tcp)
		bpf_map_update_elem(&tcp_ctx_out, &sk, &out, BPF_ANY);
}

/* The caller's context that came in a TCP option on a server's connection, taken once. */
static __always_inline bool tcp_ctx_take(__u64 sk, __u8 *trace_id, __u8 *parent_span_id)
{
	struct tcp_ctx *in = propagate_tcp ? bpf_map_lookup_elem(&tcp_ctx_in, &sk) : NULL;

	if (!in)
		return false;
	__builtin_memcpy(trace_id, in->ids.trace_id, 16);
	__builtin_memcpy(parent_span_id, in->ids.span_id, 8);
	bpf_map_delete_elem(&tcp_ctx_in, &sk);
	return true;
}

/* An address as both ends write it: the IPv4 peer of a dual-stack socket is
 * ::ffff:a.b.c.d there and a.b.c.d on its own side. */
static __always_inline void peer_addr(__u8 *dst, const __u8 *src)
{
	__u32 w[4];

	__builtin_memcpy(w, src, 16);
	if (w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0xffff)) {
		w[0] = w[3];
		w[3] = 0;
		w[2] = 0;
	}
	__builtin_memcpy(dst, w, 16);
}

/* The TCP sequence number after the last byte queued to send (sent) or read (!sent). */
static __always_inline __u32 tcp_seq(__u64 sk, bool sent)
{
	struct tcp_sock *tp = (struct tcp_sock *)sk;

	return sent ? BPF_CORE_READ(tp, write_seq) : BPF_CORE_READ(tp, copied_seq);
}

/* The `peers` key of an exchange. A server's sequence number is found only when it is
 * needed (most requests never look): the bytes read since the request began are the
 * exchange's. */
/* The `peers` key of a call from the client's address and port to the server's. */
static __always_inline void set_peer_key(struct peer_key *k, const __u8 *client, const __u8 *server,
					 __u16 client_port, __u16 server_port, __u32 seq)
{
	peer_addr(k->client_addr, client);
	peer_addr(k->server_addr, server);
	k->client_port = client_port;
	k->server_port = server_port;
	k->seq = seq;
}

/* A call's ids, left for the server at the other end of its connection. */
static __always_inline void leave_for_server(struct peer_key *k, struct obi_ids *ids)
{
	bpf_map_update_elem(&peers, k, ids, BPF_ANY);
	mark_called(k->server_port);
}

static __always_inline void peer_key_of(struct peer_key *k, struct slot *s)
{
	__u32 seq;

	if (s->ev.role != OBI_ROLE_SERVER) {
		set_peer_key(k, s->ev.local_addr, s->ev.peer_addr, s->ev.local_port, s->ev.peer_port,
			     s->st.seq);
		return;
	}
	seq = s->ev.flags & OBI_FLAG_TLS ? 0 : tcp_seq(s->st.sk, false) - (__u32)s->ev.req_len;
	set_peer_key(k, s->ev.peer_addr, s->ev.local_addr, s->ev.peer_port, s->ev.local_port, seq);
}

/* Random ids: a trace id (16 bytes, words = 4) or a span id (8 bytes, words = 2). */
static __always_inline void random_bytes(__u8 *dst, int words)
{
	for (int i = 0; i < words; i++)
		((__u32 *)dst)[i] = bpf_get_prandom_u32();
}

static __always_inline void random_ids(struct obi_ids *ids, bool trace)
{
	if (trace)
		random_bytes(ids->trace_id, 4);
	random_bytes(ids->span_id, 2);
}

#define TRACEPARENT_SCAN 1024 /* the first bytes of a request searched for its traceparent */

static __always_inline int hex_nibble(__u8 c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* What a scan of the first lines of a request found (bpf_loop over line_scan_step). */
struct line_scan {
	__u32 n;        /* bytes copied into the scratch */
	__s32 first_lf; /* the request line's line feed (-1: not in them) */
	__s32 tp_at;    /* where a traceparent header's value starts (-1: none in them) */
	__u32 pad;
};

/* One step over a request's header block in the scratch (bpf_loop callback): the next line
 * feed in the word at the scratch's pos, or the next word, up to the blank line; stops at
 * a traceparent line. One line feed a step, no inner loop: the verifier sees one simple
 * path a step, whatever program calls it. */
static long line_scan_step(__u32 i, void *ctx)
{
	struct line_scan *scan = ctx;
	struct scratch *sc = scan_scratch();
	__u32 p, q;
	__u64 lf;

	if (!sc)
		return 1;
	p = sc->pos;
	if (p >= scan->n)
		return 1;
	clamp_umax(p, HTTP1_SCAN_MAX);
	lf = *(__u64 *)(sc->buf + p) ^ LFS8;
	lf = (lf - ONES8) & ~lf & HIGHS8; /* the lowest bit set is a line feed for sure */
	if (!lf) {
		sc->pos = p + 8;
		return 0;
	}
	q = p + ctz64(lf) / 8;
	if (q >= scan->n)
		return 1; /* past what was copied */
	if (scan->first_lf < 0)
		scan->first_lf = q;
	q += 1; /* the line after it */
	sc->pos = q;
	clamp_umax(q, HTTP1_SCAN_MAX);
	if (q >= scan->n || sc->buf[q] == '\r' || sc->buf[q] == '\n')
		return 1; /* the end of what is here, or of the header block */
	if (q + 12 <= scan->n &&
	    (*(__u64 *)(sc->buf + q) | LOWER8) == W8('t', 'r', 'a', 'c', 'e', 'p', 'a', 'r') &&
	    (*(__u32 *)(sc->buf + q + 8) | 0x20202020) == 0x3a746e65 /* "ent:" */) {
		scan->tp_at = q + 12 + (sc->buf[(q + 12) & (HTTP1_SCAN_MAX - 1)] == ' ');
		return 1;
	}
	return 0;
}

#define TRACEPARENT_STEPS (TRACEPARENT_SCAN / 8 + 128) /* words, and a line feed per line */

/* "<32 hex>-<16 hex>" (a traceparent's value after its "00-"): its trace and span ids. */
static __always_inline bool parse_traceparent(const __u8 *raw, __u8 *trace_id, __u8 *span_id)
{
	if (raw[32] != '-')
		return false;
	for (int i = 0; i < 24; i++) {
		int o = i < 16 ? 2 * i : 2 * i + 1;
		int hi = hex_nibble(raw[o]), lo = hex_nibble(raw[o + 1]);

		if (hi < 0 || lo < 0)
			return false;
		if (i < 16)
			trace_id[i] = (__u8)(hi << 4 | lo);
		else
			span_id[i - 16] = (__u8)(hi << 4 | lo);
	}
	return true;
}

/* The ids of the served request in slot idx: its traceparent's trace and parent span when
 * its captured header has one ("traceparent: 00-<32 hex>-<16 hex>-.."), else a new trace;
 * a new span id. A global function: verified once. */
__noinline int served_ids(__u32 idx)
{
	struct slot *s = bpf_map_lookup_elem(&slots, &idx);
	struct line_scan scan = {.first_lf = -1, .tp_at = -1};
	__u8 *buf = http1_scratch();
	bool found = false;

	if (!s || !buf)
		return 0;
	random_bytes(s->st.ids.span_id, 2);
	scan.n = s->ev.req_captured < TRACEPARENT_SCAN ? s->ev.req_captured : TRACEPARENT_SCAN;
	if (use_bpf_loop && scan.n >= 64 && bpf_probe_read_kernel(buf, TRACEPARENT_SCAN, s->data) == 0) {
		struct scratch *sc = scan_scratch();

		if (sc) {
			sc->pos = 0;
			bpf_loop(TRACEPARENT_STEPS, line_scan_step, &scan, 0);
		}
	}
	if (scan.tp_at >= 0 && scan.tp_at + 52 <= scan.n) {
		__u32 at = scan.tp_at;

		clamp_umax(at, TRACEPARENT_SCAN - 52);
		found = buf[at] == '0' && buf[at + 1] == '0' && buf[at + 2] == '-' &&
			parse_traceparent(buf + at + 3, s->st.ids.trace_id, s->st.ids.parent_span_id);
	}
	if (!found) /* no traceparent: the caller's context in a TCP option? */
		found = tcp_ctx_take(s->st.sk, s->st.ids.trace_id, s->st.ids.parent_span_id);
	if (!found) {
		/* a traced caller on this host, by the connection? */
		struct peer_key key = {};
		struct obi_ids *caller;

		peer_key_of(&key, s);
		caller = was_called(s->ev.local_port) ? bpf_map_lookup_elem(&peers, &key) : NULL;
		if (caller) {
			__builtin_memcpy(s->st.ids.trace_id, caller->trace_id, 16);
			__builtin_memcpy(s->st.ids.parent_span_id, caller->span_id, 8);
			bpf_map_delete_elem(&peers, &key);
			found = true;
		}
	}
	if (!found) {
		random_bytes(s->st.ids.trace_id, 4);
		__builtin_memset(s->st.ids.parent_span_id, 0, 8);
	}
	s->st.peer_pending = 0;
	s->ev.flags |= OBI_FLAG_IDS;
	return 0;
}

/* A server exchange whose caller may be a traced client on this host: when that client
 * left its ids (`peers`), the exchange takes its ids now, while they are there. */
static __always_inline void link_to_peer(__u32 idx, struct slot *s)
{
	struct peer_key key = {};

	if (!was_called(s->ev.local_port))
		return;
	peer_key_of(&key, s);
	if (bpf_map_lookup_elem(&peers, &key))
		served_ids(idx);
}

/* A server exchange started on this thread: the thread serves it now. */
static __always_inline void serve_on_thread(__u32 idx, struct slot *s)
{
	struct served *v = bpf_map_lookup_elem(&serving, &s->st.thread);
	struct served fresh = {.slot = idx, .inflight = 1, .start_ns = s->ev.start_ns};

	if (!v) {
		bpf_map_update_elem(&serving, &s->st.thread, &fresh, BPF_ANY);
		return;
	}
	v->slot = idx;
	v->start_ns = s->ev.start_ns;
	__sync_fetch_and_add(&v->inflight, 1);
}

/* A client exchange started on this thread: a call made for the request it serves? */
/* The ids of a call this thread makes now: a child of the request it serves (true), or
 * of nothing (false: a new trace). */
/* nginx: the request an upstream connection's next request is written for (`upstream_for`,
 * by the upstream connection's struct sock *), set by ngx_chain_writer's uprobe. */
struct upstream_of {
	__u32 slot;
	__u32 pad;
	__u64 start_ns; /* the server exchange's */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, __u64);
	__type(value, struct upstream_of);
	__uint(max_entries, 16384);
} upstream_for SEC(".maps");

/* The server exchange of slot idx, if it is still the one that began at start_ns in pid. */
static __always_inline struct slot *served_slot(__u32 idx, __u64 start_ns, __u32 pid)
{
	struct slot *served = slot_at(idx);

	if (!served || served->st.busy != SLOT_BUSY || served->ev.start_ns != start_ns ||
	    served->ev.role != OBI_ROLE_SERVER || served->ev.pid != pid)
		return NULL; /* that request is over */
	if (!(served->ev.flags & OBI_FLAG_IDS))
		served_ids(idx);
	return served;
}

/* The request a call on connection sk is made for: the one nginx is writing sk's request
 * for; else the one request the thread serves. */
static __always_inline struct slot *call_parent(__u32 pid, __u64 sk)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct upstream_of *u = sk ? bpf_map_lookup_elem(&upstream_for, &sk) : NULL;
	struct served *v;

	if (u) {
		struct upstream_of found = *u;

		bpf_map_delete_elem(&upstream_for, &sk); /* its later requests are other requests' */
		return served_slot(found.slot, found.start_ns, pid);
	}
	v = bpf_map_lookup_elem(&serving, &id);
	/* serving nothing, or several requests at once (an event loop) */
	return v && v->inflight == 1 ? served_slot(v->slot, v->start_ns, pid) : NULL;
}

static __always_inline bool call_ids(__u32 pid, __u64 sk, struct obi_ids *ids)
{
	struct slot *served = call_parent(pid, sk);

	if (!served) {
		random_ids(ids, true);
		__builtin_memset(ids->parent_span_id, 0, 8);
		return false;
	}
	__builtin_memcpy(ids->trace_id, served->st.ids.trace_id, 16);
	__builtin_memcpy(ids->parent_span_id, served->st.ids.span_id, 8);
	random_ids(ids, false);
	return true;
}

/* A client exchange started on this thread: its ids (the ones obi put in its traceparent,
 * else a child of the request the thread serves, else a new trace), left for the server
 * at the other end of the connection (`peers`). n: the bytes of the call that started it. */
static __always_inline void client_ids(struct slot *s, __u64 sk, __u64 n, bool tls)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct thread_ids *t = bpf_map_lookup_elem(&thread_ids, &id);
	struct peer_key key = {};

	s->st.seq = tls ? 0 : tcp_seq(sk, true) - (__u32)n;
	s->ev.flags |= OBI_FLAG_IDS;
	if (t && (t->sk == sk || !t->sk) && s->ev.start_ns - t->ts_ns < THREAD_IDS_TTL_NS) {
		s->st.ids = t->ids;
		if (t->sk && !tls)
			s->st.seq = t->seq; /* before the header obi added */
		if (*(__u64 *)t->ids.parent_span_id)
			s->ev.flags |= OBI_FLAG_PARENT;
		bpf_map_delete_elem(&thread_ids, &id);
		if (tls && t->sk)
			return; /* left for the server already, when the SSL write began */
	} else if (call_ids(s->ev.pid, sk, &s->st.ids)) {
		s->ev.flags |= OBI_FLAG_PARENT;
	}
	peer_key_of(&key, s);
	leave_for_server(&key, &s->st.ids);
}

/* A pipelining client (Redis, Memcached, PostgreSQL's pipeline mode) may write its
 * requests one by one before it reads: the server may read them apart, and answer each
 * read as an exchange of its own. Each write after the first leaves the call's ids under
 * its own first byte too; user space numbers the requests of the server's exchanges that
 * share that parent (protocols.base.Caller). Not over TLS (no sequence number to tell the
 * writes apart), nor for HTTP (a request's body follows its head, read as one exchange), nor
 * past NEXT_WRITES writes: a stream of writes (a COPY, a large value) would fill `peers` with
 * entries no server looks for, pushing out those of other calls. */
#define NEXT_WRITES 8

static __always_inline void leave_next_write(struct slot *s, __u64 sk, __u64 n)
{
	struct peer_key key = {};

	if (!(s->ev.flags & OBI_FLAG_IDS) || s->st.next_writes >= NEXT_WRITES)
		return;
	s->st.next_writes++;
	set_peer_key(&key, s->ev.local_addr, s->ev.peer_addr, s->ev.local_port, s->ev.peer_port,
		     tcp_seq(sk, true) - (__u32)n);
	leave_for_server(&key, &s->st.ids);
}

/* The connection carries TLS: its ciphertext is not captured, the plaintext the TLS
 * uprobes see is. The first time a process does this, user space is told, to find
 * the TLS library it uses if the uprobes are not on it yet. */
static __always_inline void mark_tls(struct conn *c, __u32 pid)
{
	struct obi_pid_info *info = bpf_map_lookup_elem(&pid_filter, &pid);

	c->kind = CONN_TLS;
	if (c->flags & OBI_FLAG_ROLE_GUESSED)
		c->role = 0; /* the plaintext decides, not the ciphertext */
	count(OBI_COUNTER_TLS_SKIPPED);
	if (info && !(info->flags & OBI_PID_TLS_SEEN)) {
		info->flags |= OBI_PID_TLS_SEEN;
		emit_process(OBI_PROCESS_TLS, pid, 0, NULL);
	}
}

/* Request bytes moved: into the exchange in flight, or a new one (the previous one ends). */

/* ---- HTTP/2: frames, not exchanges (struct obi_h2) ----
 *
 * A connection whose client opened it with the HTTP/2 preface multiplexes its streams: the
 * exchanges above (one request, then its answer) do not fit it. Its bytes are walked frame by
 * frame instead, each side's as the process moves them, whatever the call's boundaries (a
 * frame header split across two reads is put together), and every header block, reset and
 * DATA frame header reaches user space in order (see capture.h). */

#define CONN_FLAG_H2 0x80 /* conn.flags: followed as HTTP/2 frames */
#define CONN_FLAG_H2_JOINED 0x40 /* joined mid-way, no client bytes seen yet: the preface may come */
#define H2_FRAME_HEADER 9
#define H2_CHUNK_HEADER 11 /* a chunk's payload length (2) and the frame header (9) */
#define H2_STEPS 4096      /* frames, pieces of one, and buffers walked in one call */
#define H2_HEADERS 0x1
#define H2_RST_STREAM 0x3
#define H2_PUSH_PROMISE 0x5
#define H2_CONTINUATION 0x9
#define H2_DATA 0x0
#define H2_PREFACE_LEN 24 /* "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" */

/* One side of an HTTP/2 connection, between calls. */
struct h2_side {
	__u32 left; /* payload bytes of the current frame still to come */
	__u32 kept; /* of them, captured so far */
	__u8 keep;  /* the current frame's payload is captured */
	__u8 have;  /* bytes of the next frame header gathered (split across calls) */
	__u8 lost;  /* OBI_H2_LOST for its next record */
	__u8 data;  /* the current frame is DATA: only its first OBI_H2_DATA_PREFIX bytes are kept */
	__u8 hdr[24];
};

struct h2_state {
	struct h2_side side[2];
	__u8 started; /* its first record went out */
	__u8 desync;  /* a buffer was not walked to its end: frame boundaries unknown, given up */
	__u8 pad[6];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, __u64); /* struct sock * */
	__type(value, struct h2_state);
	__uint(max_entries, 16384);
} h2_conns SEC(".maps");

struct h2_record {
	struct obi_h2 ev;
	__u8 data[OBI_H2_DATA_MAX + OBI_H2_PAYLOAD_MAX + H2_CHUNK_HEADER + 16];
	__u32 full; /* a chunk found no room: no later one goes in (user space would read it as
		     * following the one lost), and the side's next record says LOST */
	__u16 tail;    /* bytes after the chunks (OBI_H2_PARENT) */
	__u16 headers; /* a HEADERS frame began among the chunks */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct h2_record);
	__uint(max_entries, 1);
} h2_scratch SEC(".maps");

/* The parent of the streams a client's call opens, from h2_parent to h2_call. */
struct h2_parent_ids {
	__u64 thread; /* the pid_tgid of the call they are for (0: none) */
	__u8 ids[OBI_H2_PARENT_SIZE];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct h2_parent_ids);
	__uint(max_entries, 1);
} h2_parents SEC(".maps");

/* A walk of one call's bytes (bpf_loop context): one buffer, or the buffers of a vectored
 * call in turn. */
struct h2_walk {
	__u64 src;  /* the buffer being walked */
	__u32 n;    /* its bytes */
	__u32 off;  /* walked so far */
	__u64 iov;  /* the next struct iovec (vectored calls) */
	__u64 left; /* the call's bytes not in a buffer walked yet */
	struct h2_side *side;
	struct h2_record *r;
};

/* Appends a chunk: its payload length, a frame header, `copy` payload bytes from `from`.
 * False when the record has no room (the frame is then lost to user space). */
static __always_inline bool h2_chunk(struct h2_record *r, const __u8 *hdr, __u32 copy, __u64 from)
{
	__u32 at = r->ev.len;
	__u8 *dst;

	if (r->full || at + H2_CHUNK_HEADER + copy > OBI_H2_DATA_MAX) {
		r->full = 1;
		return false;
	}
	clamp_umax(at, OBI_H2_DATA_MAX);
	clamp_umax(copy, OBI_H2_PAYLOAD_MAX);
	dst = r->data + at;
	dst[0] = copy & 0xff;
	dst[1] = copy >> 8;
	__builtin_memcpy(dst + 2, hdr, H2_FRAME_HEADER);
	if (copy && bpf_probe_read_user(dst + H2_CHUNK_HEADER, copy, (void *)from))
		return false;
	r->ev.len = at + H2_CHUNK_HEADER + copy;
	return true;
}

static long h2_step(__u32 i, void *ctx)
{
	struct h2_walk *w = ctx;
	struct h2_side *sd = w->side;
	struct h2_record *r = w->r;
	__u32 avail, take, len, copy;
	__u8 need, type;

	if (w->off >= w->n) { /* this buffer is walked: the next one of a vectored call */
		struct iovec iov = {};

		if (!w->left || !w->iov || bpf_probe_read_user(&iov, sizeof(iov), (void *)w->iov))
			return 1;
		w->iov += sizeof(iov);
		w->src = (__u64)iov.iov_base;
		w->n = iov.iov_len < w->left ? (__u32)iov.iov_len : (__u32)w->left;
		w->left -= w->n;
		w->off = 0;
		return 0;
	}
	avail = w->n - w->off;
	if (sd->left) { /* the payload of a frame begun before */
		take = sd->left < avail ? sd->left : avail;
		__u32 limit = sd->data ? OBI_H2_DATA_PREFIX : OBI_H2_PAYLOAD_MAX;

		if (sd->keep && sd->kept < limit) {
			__u8 *more = sd->hdr + 12; /* the chunk's header, beside the frame's */

			copy = limit - sd->kept;
			copy = take < copy ? take : copy;
			more[0] = copy >> 16;
			more[1] = copy >> 8;
			more[2] = copy;
			more[3] = OBI_H2_MORE;
			more[4] = more[5] = more[6] = more[7] = more[8] = 0;
			if (h2_chunk(r, more, copy, w->src + w->off))
				sd->kept += copy;
			else
				sd->lost = 1;
		}
		sd->left -= take;
		w->off += take;
		return 0;
	}
	/* the next frame header, perhaps in pieces */
	need = H2_FRAME_HEADER - sd->have;
	take = need < avail ? need : avail;
	clamp_umax(take, H2_FRAME_HEADER);
	if (sd->have > H2_FRAME_HEADER ||
	    bpf_probe_read_user(sd->hdr + (sd->have & 15), take, (void *)(w->src + w->off)))
		return 1;
	sd->have += take;
	w->off += take;
	if (sd->have < H2_FRAME_HEADER)
		return 0; /* the rest comes with the next buffer, or call */
	sd->have = 0;
	len = (__u32)sd->hdr[0] << 16 | (__u32)sd->hdr[1] << 8 | sd->hdr[2];
	type = sd->hdr[3];
	sd->left = len;
	sd->kept = 0;
	sd->data = type == H2_DATA;
	r->headers |= type == H2_HEADERS;
	sd->keep = type == H2_HEADERS || type == H2_CONTINUATION || type == H2_PUSH_PROMISE ||
		   type == H2_RST_STREAM || sd->data;
	avail = w->n - w->off;
	take = len < avail ? len : avail; /* the payload this call moved; the rest comes later */
	if (sd->keep) {
		copy = sd->data ? OBI_H2_DATA_PREFIX : OBI_H2_PAYLOAD_MAX;
		copy = take < copy ? take : copy;
		if (h2_chunk(r, sd->hdr, copy, w->src + w->off))
			sd->kept = copy;
		else
			sd->lost = 1;
	} /* else SETTINGS, PING, WINDOW_UPDATE, ...: walked over */
	sd->left = len - take;
	w->off += take;
	return 0;
}

/* Walks a call's `n` bytes: at `src`, or in the iovec array at `iov`; false when they could
 * not be walked to their end. */
static __always_inline bool h2_walk(struct h2_side *sd, struct h2_record *r, __u64 src, __u64 iov, __u64 n)
{
	struct h2_walk w = {.side = sd, .r = r};

	if (iov) {
		w.iov = iov;
		w.left = n;
	} else if (src) {
		w.src = src;
		w.n = n > 0xffffffffULL ? 0xffffffff : (__u32)n;
	} else {
		return false;
	}
	bpf_loop(H2_STEPS, h2_step, &w, 0);
	return w.off >= w.n && !w.left;
}

/* Sends the record; when the ring has no room, `lost` (the side's) makes the next one say so. */
static __always_inline void h2_emit(struct h2_record *r, struct conn *c, __u32 pid, __u64 sk, __u8 direction,
				    __u8 flags, __u8 *lost)
{
	__u64 size;

	r->ev.kind = OBI_RECORD_H2;
	r->ev.direction = direction;
	r->ev.role = c->role;
	r->ev.flags |= flags;
	r->ev.pid = pid;
	r->ev.conn = sk;
	r->ev.ts_ns = bpf_ktime_get_ns();
	r->ev.family = c->family;
	r->ev.local_port = c->local_port;
	r->ev.peer_port = c->peer_port;
	__builtin_memcpy(r->ev.local_addr, c->local_addr, 16);
	__builtin_memcpy(r->ev.peer_addr, c->peer_addr, 16);
	size = sizeof(r->ev) + r->ev.len + r->tail;
	clamp_umax(size, sizeof(r->ev) + OBI_H2_DATA_MAX + OBI_H2_PARENT_SIZE);
	if (bpf_ringbuf_output(&events, r, size, wakeup_flag(size))) {
		count(OBI_COUNTER_H2_LOST);
		if (lost)
			*lost = 1;
	}
}

static __always_inline struct h2_record *h2_record(void)
{
	__u32 zero = 0;
	struct h2_record *r = bpf_map_lookup_elem(&h2_scratch, &zero);

	if (r) {
		r->ev.len = 0;
		r->ev.flags = 0;
		r->full = 0;
		r->tail = 0;
		r->headers = 0;
	}
	return r;
}

/* A client's bytes, before h2_call walks them: the request its thread serves, whose child
 * any stream they open is. Its trace and span ids are left for h2_call (`h2_parents`), which
 * puts them after the chunks when a HEADERS frame began among them. Called apart from h2_call
 * (the served request's ids may be made now, by served_ids): the stacks of the two do not add
 * up. */
__attribute__((noinline)) int h2_parent(__u32 pid, __u64 sk)
{
	__u32 zero = 0;
	struct h2_parent_ids *p = bpf_map_lookup_elem(&h2_parents, &zero);
	struct slot *served;

	if (!p)
		return 0;
	p->thread = 0;
	served = call_parent(pid, sk);
	if (!served)
		return 0;
	__builtin_memcpy(p->ids, served->st.ids.trace_id, 16);
	__builtin_memcpy(p->ids + 16, served->st.ids.span_id, 8);
	p->thread = bpf_get_current_pid_tgid();
	return 1;
}

/* h2_call's `how`: the pid (high 32 bits), the call's kind (bits 16-23), the bytes at the
 * start that are not frames (bits 8-15: the preface), and flags. */
#define H2_CALL_REQUEST 0x1 /* the bytes go from client to server */
#define H2_CALL_TLS 0x2     /* they are TLS plaintext */
#define H2_CALL_ONE 0x4     /* they are all in the buffer at `src` */

static __always_inline __u64 h2_how(__u32 pid, __u32 call_kind, __u32 skip, bool request, bool tls, bool one)
{
	return (__u64)pid << 32 | (__u64)(call_kind & 0xff) << 16 | (skip & 0xff) << 8 |
	       (request ? H2_CALL_REQUEST : 0) | (tls ? H2_CALL_TLS : 0) | (one ? H2_CALL_ONE : 0);
}

/* The bytes of one call on an HTTP/2 connection: its frames, as one record. A global
 * function: the verifier checks it once, apart from the syscall programs that call it (its
 * arguments are scalars: the connection is looked up again by its sock). `call_ptr` is the
 * call's pointer argument, for the buffers of a vectored one. */
__attribute__((noinline)) int h2_call(__u64 sk, __u64 src, __u64 n, __u64 call_ptr, __u64 how)
{
	__u32 pid = how >> 32, call_kind = (how >> 16) & 0xff, skip = (how >> 8) & 0xff;
	struct h2_state *st = bpf_map_lookup_elem(&h2_conns, &sk);
	struct conn *c = bpf_map_lookup_elem(&conns, &sk);
	struct h2_record *r;
	struct h2_side *sd;
	__u8 direction = (how & H2_CALL_REQUEST) ? OBI_H2_TO_SERVER : OBI_H2_TO_CLIENT;
	__u8 flags = (how & H2_CALL_TLS) ? OBI_H2_TLS : 0;
	bool whole = false;

	if (!st || !c || st->desync || skip > n)
		return 0;
	r = h2_record();
	if (!r)
		return 0;
	sd = &st->side[direction & 1];
	if (sd->lost) {
		flags |= OBI_H2_LOST;
		sd->lost = 0;
	}
	if (!st->started) {
		flags |= OBI_H2_START;
		st->started = 1;
	}
	if (how & H2_CALL_ONE) {
		whole = h2_walk(sd, r, src + skip, 0, n - skip);
	} else if (call_kind == CALL_READV || call_kind == CALL_WRITEV) {
		whole = h2_walk(sd, r, 0, call_ptr, n);
	} else if (call_kind == CALL_RECVMSG || call_kind == CALL_SENDMSG) {
		__u64 iov_ptr = 0;

		if (bpf_probe_read_user(&iov_ptr, sizeof(iov_ptr),
					(void *)(call_ptr + __builtin_offsetof(struct user_msghdr, msg_iov))))
			return 0;
		whole = h2_walk(sd, r, 0, iov_ptr, n);
	}
	if (!whole) {
		st->desync = 1; /* where the next frame starts is not known any more */
		flags |= OBI_H2_LOST;
		count(OBI_COUNTER_H2_LOST);
	}
	if (r->headers && direction == OBI_H2_TO_SERVER && c->role == OBI_ROLE_CLIENT) {
		/* streams opened: their parent, if h2_parent found one for this call */
		__u32 zero = 0, at = r->ev.len;
		struct h2_parent_ids *p = bpf_map_lookup_elem(&h2_parents, &zero);

		clamp_umax(at, OBI_H2_DATA_MAX);
		if (p && p->thread == bpf_get_current_pid_tgid()) {
			__builtin_memcpy(r->data + at, p->ids, OBI_H2_PARENT_SIZE);
			r->tail = OBI_H2_PARENT_SIZE;
			flags |= OBI_H2_PARENT;
		}
	}
	if (r->ev.len || (flags & (OBI_H2_LOST | OBI_H2_START)))
		h2_emit(r, c, pid, sk, direction, flags, &sd->lost);
	return 0;
}

/* The preface came in pieces: its remaining bytes are walked over as a payload no one keeps. */
static __always_inline void st_skip_preface(__u64 sk, __u32 left)
{
	struct h2_state *st = bpf_map_lookup_elem(&h2_conns, &sk);

	if (st)
		st->side[OBI_H2_TO_SERVER].left = left;
}

/* A connection's first request bytes are the HTTP/2 client preface: follow its frames. */
static __always_inline bool h2_begins(struct conn *c, __u32 pid, __u64 sk, const __u8 *head, __u64 src, __u64 len,
				      bool tls)
{
	struct h2_state fresh = {};

	/* "PRI " is the preface's start and no HTTP/1 request's: a first read of 4 bytes will do */
	if (head[0] != 'P' || head[1] != 'R' || head[2] != 'I' || head[3] != ' ' || !use_bpf_loop ||
	    (len >= 8 && (head[4] != '*' || head[5] != ' ' || head[6] != 'H' || head[7] != 'T')))
		return false;
	if (bpf_map_update_elem(&h2_conns, &sk, &fresh, BPF_ANY))
		return false;
	c->flags |= CONN_FLAG_H2;
	if (c->role == OBI_ROLE_CLIENT)
		h2_parent(pid, sk);
	if (len >= H2_PREFACE_LEN)
		h2_call(sk, src, len, 0, h2_how(pid, 0, H2_PREFACE_LEN, true, tls, true));
	else /* the rest of the preface comes next: read as if it were a frame header's start */
		st_skip_preface(sk, H2_PREFACE_LEN - (__u32)len);
	return true;
}

/* Could these 9 bytes be an HTTP/2 frame header as a peer sends it? The length within what
 * SETTINGS_MAX_FRAME_SIZE allows, a known type with only its own flags, a stream id where the
 * type needs one and none where it must not, the fixed lengths of the fixed-size frames. */
static __always_inline bool h2_header_plausible(const __u8 *h, __u32 *len)
{
	__u32 stream = (__u32)h[5] << 24 | (__u32)h[6] << 16 | (__u32)h[7] << 8 | h[8];
	__u8 flags = h[4];

	*len = (__u32)h[0] << 16 | (__u32)h[1] << 8 | h[2];
	if (*len > (1 << 20) || (stream >> 31))
		return false;
	switch (h[3]) {
	case 0x0: /* DATA: END_STREAM, PADDED */
		return stream && !(flags & ~0x09);
	case 0x1: /* HEADERS: END_STREAM, END_HEADERS, PADDED, PRIORITY */
		return stream && !(flags & ~0x2d);
	case 0x2: /* PRIORITY */
		return stream && *len == 5 && !flags;
	case 0x3: /* RST_STREAM */
		return stream && *len == 4 && !flags;
	case 0x4: /* SETTINGS (ACK: empty) */
		return !stream && !(flags & ~0x01) && *len % 6 == 0 && !(flags && *len);
	case 0x5: /* PUSH_PROMISE: END_HEADERS, PADDED */
		return stream && !(flags & ~0x0c) && *len >= 4;
	case 0x6: /* PING */
		return !stream && *len == 8 && !(flags & ~0x01);
	case 0x7: /* GOAWAY */
		return !stream && *len >= 8 && !flags;
	case 0x8: /* WINDOW_UPDATE */
		return *len == 4 && !flags;
	case 0x9: /* CONTINUATION: END_HEADERS */
		return stream && !(flags & ~0x04);
	}
	return false;
}

#define H2_PLAUSIBLE_FRAMES 8

/* The first bytes obi sees of a connection found mid-way: are they HTTP/2 frames? `n` bytes at
 * `src`, and `more` when the call moved others in further buffers (a vectored call). Yes when
 * every frame header is plausible and the frames end exactly where the bytes do; or, where a
 * frame goes on past them, when more buffers follow or two plausible headers came before.
 * Nothing else obi knows passes: an HTTP/1 line, RESP, PostgreSQL's and MySQL's messages and
 * a TLS record all start with what would be an impossible length, type or stream. A global
 * function, checked apart from its callers. */
__attribute__((noinline)) int h2_frames_at(__u64 src, __u64 n, __u64 more)
{
	__u64 off = 0;
	__u32 len = 0;
	__u8 h[H2_FRAME_HEADER];
	int frames = 0;

	for (int i = 0; i < H2_PLAUSIBLE_FRAMES; i++) {
		if (off == n)
			return frames > 0;
		if (off + H2_FRAME_HEADER > n)
			return more && frames > 0; /* a header that goes on in the next buffer */
		if (bpf_probe_read_user(h, sizeof(h), (void *)(src + off)) || !h2_header_plausible(h, &len))
			return 0;
		frames++;
		off += H2_FRAME_HEADER + len;
		if (off > n)
			return more || frames >= 2;
	}
	return 1;
}

/* A connection found mid-way speaks HTTP/2: followed from here, its role for sure (a socket a
 * listener accepted keeps its backlog), the HPACK tables it built before unknown to user space
 * (its first record does not say START). */
static __always_inline bool h2_joins(struct conn *c, __u64 sk, __u64 src, __u64 n, __u64 room)
{
	struct h2_state fresh = {.started = 1};

	if (!src || !use_bpf_loop || !h2_frames_at(src, n < room ? n : room, n > room))
		return false;
	if (bpf_map_update_elem(&h2_conns, &sk, &fresh, BPF_ANY))
		return false;
	c->flags |= CONN_FLAG_H2 | CONN_FLAG_H2_JOINED;
	c->role = BPF_CORE_READ((struct sock *)sk, sk_max_ack_backlog) ? OBI_ROLE_SERVER : OBI_ROLE_CLIENT;
	return true;
}

/* The connection closed: user space ends its streams in flight. */
static __always_inline void h2_closed(struct conn *c, __u64 sk)
{
	struct h2_record *r = h2_record();

	bpf_map_delete_elem(&h2_conns, &sk);
	if (r)
		h2_emit(r, c, 0, sk, 0, OBI_H2_CLOSED, NULL);
}

static __always_inline void on_request_bytes(struct conn *c, struct obi_conn_key *key, __u64 sk,
					     __u64 src, __u64 room, __u64 n, bool tls)
{
	struct slot *s = slot_at(c->slot);
	__u64 len = n < room ? n : room;

	if (s && s->st.phase != PHASE_REQUEST && !s->st.interim) {
		end_exchange(c, OBI_END_NEXT_REQUEST);
		s = NULL;
	}
	if (!s) {
		__u8 head[8] = {};

		if (src && len >= 3 && bpf_probe_read_user(head, sizeof(head), (void *)src) == 0) {
			if (!tls && looks_like_tls(head)) {
				mark_tls(c, key->pid);
				return;
			}
			if (len >= 4 && h2_begins(c, key->pid, sk, head, src, len, tls))
				return;
		}
		s = start_exchange(c, key, sk);
		if (!s)
			return;
		if (len >= 5 && http1_is_request(head))
			s->ev.flags |= OBI_FLAG_HTTP;
		capture_request(s, src, len);
		if (c->role == OBI_ROLE_SERVER) {
			serve_on_thread(c->slot, s);
			s->st.peer_pending = 1; /* its caller's ids: looked for when it answers, or calls */
			/* Over TLS the caller's ids are keyed by the connection alone, left at its
			 * SSL_write's entry, before these bytes left it: take them now. By the time
			 * this server's SSL_write returns, its caller may have read the answer and
			 * left the next request's ids in their place. */
			if (tls)
				link_to_peer(c->slot, s);
		} else {
			client_ids(s, sk, n, tls);
		}
	} else {
		capture_request(s, src, len);
		if (c->role != OBI_ROLE_SERVER && !tls && !(s->ev.flags & OBI_FLAG_HTTP))
			leave_next_write(s, sk, n);
	}
	s->ev.req_len += n;
	s->st.last_ns = bpf_ktime_get_ns();
	if (s->ev.resp_start_ns == 0)
		s->ev.end_ns = s->st.last_ns;
}

/* A syscall moved ciphertext on a TLS socket: which SSL object is it? A syscall made
 * inside an SSL call says it for sure. Without one (TLS over memory BIOs: the
 * application moves the ciphertext itself), the order of calls on the thread tells:
 * ciphertext written right after an SSL call is that object's, and an SSL call right
 * after ciphertext was read reads it (tls_return). */
static __always_inline void tls_socket_used(__u32 pid, __u32 fd, bool inbound)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct tls_thread *t = bpf_map_lookup_elem(&tls_threads, &id);
	struct tls_key key = {.pid = pid};
	struct tls_bind *b, fresh = {.fd = fd};

	if (!t)
		return; /* this thread never called the TLS library */
	if (inbound)
		t->last_fd = fd;
	key.ssl = t->ssl ? t->ssl : t->last_ssl;
	if (!key.ssl)
		return;
	b = bpf_map_lookup_elem(&tls_socks, &key);
	if (t->ssl) {
		if (!b || b->fd != fd || !b->seen) {
			fresh.seen = 1;
			bpf_map_update_elem(&tls_socks, &key, &fresh, BPF_ANY);
		}
	} else if (!b && !inbound) {
		bpf_map_update_elem(&tls_socks, &key, &fresh, BPF_NOEXIST);
	}
}

/* Bytes moved by a finished call; `inbound` when they were read; `tls` when they are
 * TLS plaintext from the uprobes. */
static __always_inline void on_bytes(__u32 pid, __u32 gen, struct pending_call *call, __s64 ret,
				     bool inbound, bool tls)
{
	struct obi_conn_key key = {.pid = pid, .fd = call->fd};
	struct conn *c;
	struct slot *s;
	__u64 room = ~0ULL, src = 0, sk = 0;
	bool request;

	if (ret <= 0)
		return;
	c = conn_of(&key, gen, &sk);
	if (!c || c->kind == CONN_OTHER)
		return;
	if (!tls && c->kind == CONN_TLS) {
		tls_socket_used(pid, call->fd, inbound);
		return;
	}
	if (tls && c->kind == CONN_TCP) {
		/* TLS that the ciphertext did not give away (found mid-way, or a handshake that
		 * began with a short read): what was gathered of it is ciphertext, dropped */
		c->kind = CONN_TLS;
		if (c->slot != NO_SLOT)
			end_exchange(c, 0);
		if (c->flags & OBI_FLAG_ROLE_GUESSED)
			c->role = 0;
	}
	if (call->kind != CALL_SENDFILE)
		src = call_buffer(call, &room);
	if (!c->role) {
		/* found mid-way (accepted while obi started, say): a socket a listener accepted
		 * keeps the listener's backlog, one that connected has none; a server that
		 * speaks first (HTTP/2's SETTINGS, MySQL's greeting) is still a server */
		struct sock *so = (struct sock *)sk;
		__u8 head[16] = {};
		bool response;

		if (h2_joins(c, sk, src, (__u64)ret, room)) {
			/* its frames, from here */
		} else if (BPF_CORE_READ(so, sk_max_ack_backlog)) {
			c->role = OBI_ROLE_SERVER;
		} else {
			/* otherwise: a reader of requests, or of responses? */
			response = src && bpf_probe_read_user(head, sizeof(head), (void *)src) == 0 &&
				   http1_status(head);
			c->role = inbound == !response ? OBI_ROLE_SERVER : OBI_ROLE_CLIENT;
		}
	}
	request = inbound == (c->role == OBI_ROLE_SERVER);
	if (c->flags & CONN_FLAG_H2) {
		if (request && c->role == OBI_ROLE_CLIENT)
			h2_parent(pid, sk);
		if ((c->flags & CONN_FLAG_H2_JOINED) && request) {
			/* a server that spoke first (its SETTINGS) on a connection whose accept was
			 * missed: the client's preface says it is seen from its start after all */
			__u8 head[8] = {};
			__u64 len = (__u64)ret < room ? (__u64)ret : room;

			c->flags &= ~CONN_FLAG_H2_JOINED;
			if (src && len >= 4 && bpf_probe_read_user(head, sizeof(head), (void *)src) == 0 &&
			    h2_begins(c, pid, sk, head, src, len, tls))
				return;
		}
		h2_call(sk, src, (__u64)ret, call->ptr,
			h2_how(pid, call->kind, 0, request, tls, (__u64)ret <= room));
		return;
	}
	if (request) {
		on_request_bytes(c, &key, sk, src, room, (__u64)ret, tls);
		if (!tls && c->kind == CONN_TLS) /* the ClientHello of a TLS connection */
			tls_socket_used(pid, call->fd, inbound);
		return;
	}
	s = slot_at(c->slot);
	if (!s) {
		count(OBI_COUNTER_ORPHAN_BYTES);
		return;
	}
	if (on_response_bytes(c, s, call, src, room, (__u64)ret))
		end_exchange(c, OBI_END_FRAMED);
}

/* accept() and connect() that returned: a connection to track. Global functions (verified
 * once, each with its own frame): tracking a connection takes stack that the exits' frames
 * would otherwise carry on their way to handle_bytes, and kernels before private BPF stacks
 * allow 512 bytes for a whole chain of calls. */
__noinline int on_accept_done(__u32 pid, __u32 gen, __s64 ret)
{
	struct obi_conn_key key = {.pid = pid, .fd = (__u32)ret};
	__u64 sk;

	if (ret >= 0)
		track(&key, gen, OBI_ROLE_SERVER, &sk);
	return 0;
}

__noinline int on_connect_done(__u32 pid, __u32 gen, __u32 fd, __s64 ret)
{
	struct obi_conn_key key = {.pid = pid, .fd = fd};
	__u64 sk;

	if (ret == 0 || ret == -EINPROGRESS)
		track(&key, gen, OBI_ROLE_CLIENT, &sk);
	return 0;
}

/* A server about to read again: a response it finished writing is over. */
static __always_inline void on_read_start(__u32 pid, struct obi_pid_info *info, __u32 fd)
{
	struct obi_conn_key key = {.pid = pid, .fd = fd};
	__u64 sk;
	struct conn *c = lookup_conn(&key, info->gen, &sk);
	struct slot *s;

	if (!c || c->role != OBI_ROLE_SERVER)
		return;
	s = slot_at(c->slot);
	if (!s || s->st.interim)
		return;
	if (s->st.phase == PHASE_COMPLETE)
		end_exchange(c, OBI_END_FRAMED);
	else if (s->st.phase == PHASE_RESPONSE &&
		 (s->st.framing == FRAMING_UNKNOWN || s->st.framing == FRAMING_CLOSE))
		end_exchange(c, OBI_END_READ);
}

/* close(): the fd goes; the connection ends when its socket does (common_sock_state). */
static __always_inline int enter_close(__u64 fd)
{
	__u32 pid;
	struct obi_pid_info *info = traced(&pid);
	struct obi_conn_key key = {.pid = pid, .fd = (__u32)fd};

	if (info)
		bpf_map_delete_elem(&fds, &key);
	return 0;
}

/* shutdown(): the FIN it sends is not the end of the conversation. */
static __always_inline int enter_shutdown(__u64 fd)
{
	__u32 pid;
	struct obi_pid_info *info = traced(&pid);
	struct obi_conn_key key = {.pid = pid, .fd = (__u32)fd};
	struct conn *c;
	__u64 sk;

	if (!info)
		return 0;
	c = lookup_conn(&key, info->gen, &sk);
	if (c)
		c->shut = 1;
	return 0;
}

static __always_inline int enter_close_range(void)
{
	__u32 pid;
	struct obi_pid_info *info = traced(&pid);

	/* every fd of the process may mean something else now */
	if (info)
		info->gen += 1;
	return 0;
}

/* ---- context propagation: a traceparent header in outgoing HTTP/1 requests -------
 *
 * A traced process's connection joins `msg_socks` when it is established (a cgroup
 * sock_ops program), and an sk_msg program sees what the process sends on it. Into the
 * first bytes of each HTTP/1 request, right after its request line, it inserts
 * "Traceparent: 00-<trace>-<span>-01" with the ids the call's client exchange then takes
 * (`thread_ids`). A request that has a traceparent already is left as it is.
 */
#define TP_HEADER_LEN 70 /* "Traceparent: 00-" 32 hex "-" 16 hex "-01\r\n" */
#define MSG_SCAN 4096    /* the first bytes of a request searched for its request line's end */
#define MSG_JOIN 16384   /* the first bytes of a request made one piece again after the insertion */

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__type(key, __u64); /* struct sock * */
	__type(value, __u64);
	__uint(max_entries, 65536);
} msg_socks SEC(".maps");

/* sockets traced processes are connecting: into msg_socks once established */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, __u64);
	__type(value, __u32);
	__uint(max_entries, 16384);
} connecting SEC(".maps");

static __always_inline void mark_connecting(__u32 fd)
{
	struct conn scratch = {};
	__u64 sk = read_socket(fd, &scratch);
	__u32 one = 1;

	if (sk)
		bpf_map_update_elem(&connecting, &sk, &one, BPF_ANY);
}

/* Common enter path: remember the arguments until the syscall returns. */
static __always_inline int enter_call(__u32 kind, __u64 fd, __u64 ptr, __u64 count_arg)
{
	__u32 pid;
	struct obi_pid_info *info = traced(&pid);
	__u64 id = bpf_get_current_pid_tgid();
	struct pending_call call = {.kind = kind, .fd = (__u32)fd, .ptr = ptr, .count = count_arg};

	if (!info || kind == CALL_PEEK)
		return 0;
	call.pid = pid;
	call.gen = info->gen;
	if (kind == CALL_READ || kind == CALL_READV || kind == CALL_RECVMSG)
		on_read_start(pid, info, (__u32)fd);
	if (kind == CALL_CONNECT && (propagate_headers || propagate_tcp))
		mark_connecting((__u32)fd);
	if (bpf_map_update_elem(&pending_calls, &id, &call, BPF_ANY))
		count(OBI_COUNTER_CALL_TABLE_FULL);
	return 0;
}

#define CALL_TLS 0x100 /* with a CALL_* kind in handle_bytes: TLS plaintext */

/* Bytes moved by a read-like or write-like call (a global function: verified once). */
__noinline int handle_bytes(__u64 pid_gen, __u64 kind_fd, __u64 ptr, __u64 count_arg, __s64 ret)
{
	__u32 kind = (kind_fd >> 32) & ~CALL_TLS;
	struct pending_call call = {.kind = kind, .fd = (__u32)kind_fd, .ptr = ptr, .count = count_arg};

	on_bytes(pid_gen >> 32, (__u32)pid_gen, &call, ret,
		 kind == CALL_READ || kind == CALL_READV || kind == CALL_RECVMSG, (kind_fd >> 32) & CALL_TLS);
	return 0;
}

/* Common exit path for every syscall that enter_call stashed. */
static __always_inline int exit_call(__s64 ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct pending_call *pending = bpf_map_lookup_elem(&pending_calls, &id);
	struct pending_call call;

	if (!pending)
		return 0;
	call = *pending;
	bpf_map_delete_elem(&pending_calls, &id);
	switch (call.kind) {
	case CALL_ACCEPT:
		on_accept_done(call.pid, call.gen, ret);
		break;
	case CALL_CONNECT:
		on_connect_done(call.pid, call.gen, call.fd, ret);
		break;
	default:
		handle_bytes((__u64)call.pid << 32 | call.gen, (__u64)call.kind << 32 | call.fd, call.ptr,
			     call.count, ret);
	}
	return 0;
}

/* ---- classic tracepoints (tracefs mounted) ---------------------------- */

#define TP_ENTER(name, kind, ptr_arg, count_arg)                                   \
	SEC("tracepoint/syscalls/sys_enter_" #name)                                \
	int tp_enter_##name(struct trace_event_raw_sys_enter *ctx)                 \
	{                                                                          \
		return enter_call(kind, ctx->args[0], ptr_arg, count_arg);         \
	}

TP_ENTER(read, CALL_READ, ctx->args[1], 0)
TP_ENTER(recvfrom, ctx->args[3] & MSG_PEEK ? CALL_PEEK : CALL_READ, ctx->args[1], 0)
TP_ENTER(readv, CALL_READV, ctx->args[1], ctx->args[2])
TP_ENTER(recvmsg, ctx->args[2] & MSG_PEEK ? CALL_PEEK : CALL_RECVMSG, ctx->args[1], 0)
TP_ENTER(write, CALL_WRITE, ctx->args[1], 0)
TP_ENTER(sendto, CALL_WRITE, ctx->args[1], 0)
TP_ENTER(writev, CALL_WRITEV, ctx->args[1], ctx->args[2])
TP_ENTER(sendmsg, CALL_SENDMSG, ctx->args[1], 0)
TP_ENTER(accept, CALL_ACCEPT, 0, 0)
TP_ENTER(accept4, CALL_ACCEPT, 0, 0)
TP_ENTER(connect, CALL_CONNECT, 0, 0)
TP_ENTER(sendfile64, CALL_SENDFILE, 0, 0)

/* One exit program for every sys_exit_<name> whose sys_enter_<name> has a
 * tp_enter_<name> (user space attaches it to each): verified once. */
SEC("tracepoint")
int tp_exit(struct trace_event_raw_sys_exit *ctx)
{
	return exit_call(ctx->ret);
}

/* A listen() that worked, by a process not traced: user space looks at its ports now
 * instead of finding them on its next scan of /proc. Rare: no cost on the hot path. */
static __always_inline int notice_listen(long ret)
{
	__u32 pid;

	if (!notice_processes || ret != 0 || current_pid(&pid) || bpf_map_lookup_elem(&pid_filter, &pid))
		return 0;
	emit_process(OBI_PROCESS_LISTEN, pid, 0, NULL);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_listen")
int tp_exit_listen(struct trace_event_raw_sys_exit *ctx)
{
	return notice_listen(ctx->ret);
}

SEC("tracepoint/syscalls/sys_enter_close")
int tp_enter_close(struct trace_event_raw_sys_enter *ctx)
{
	return enter_close(ctx->args[0]);
}

SEC("tracepoint/syscalls/sys_enter_shutdown")
int tp_enter_shutdown(struct trace_event_raw_sys_enter *ctx)
{
	return enter_shutdown(ctx->args[0]);
}

SEC("tracepoint/syscalls/sys_enter_close_range")
int tp_enter_close_range(struct trace_event_raw_sys_enter *ctx)
{
	return enter_close_range();
}

/* ---- raw tracepoints (no tracefs needed) -------------------------------- */

static __always_inline long syscall_nr(struct pt_regs *regs)
{
#if defined(__TARGET_ARCH_x86)
	return BPF_CORE_READ(regs, orig_ax);
#elif defined(__TARGET_ARCH_arm64)
	return BPF_CORE_READ((struct user_pt_regs *)regs, regs[8]);
#endif
}

static __always_inline bool hooked(long nr)
{
	switch (nr) {
	case OBI_NR_read:
	case OBI_NR_recvfrom:
	case OBI_NR_readv:
	case OBI_NR_recvmsg:
	case OBI_NR_write:
	case OBI_NR_sendto:
	case OBI_NR_writev:
	case OBI_NR_sendmsg:
	case OBI_NR_sendfile:
	case OBI_NR_accept:
	case OBI_NR_accept4:
	case OBI_NR_connect:
	case OBI_NR_close:
	case OBI_NR_close_range:
	case OBI_NR_shutdown:
		return true;
	}
	return false;
}

SEC("raw_tracepoint/sys_enter")
int raw_sys_enter(struct bpf_raw_tracepoint_args *ctx)
{
	struct pt_regs *regs = (struct pt_regs *)ctx->args[0];
	long nr = (long)ctx->args[1];
	__u64 fd, arg1, arg2;

	/* every syscall of every process comes here: reject the others first */
	if (!hooked(nr))
		return 0;
	fd = PT_REGS_PARM1_CORE_SYSCALL(regs);
	arg1 = PT_REGS_PARM2_CORE_SYSCALL(regs);
	switch (nr) {
	case OBI_NR_read:
		return enter_call(CALL_READ, fd, arg1, 0);
	case OBI_NR_recvfrom:
		arg2 = PT_REGS_PARM4_CORE_SYSCALL(regs);
		return enter_call(arg2 & MSG_PEEK ? CALL_PEEK : CALL_READ, fd, arg1, 0);
	case OBI_NR_readv:
		arg2 = PT_REGS_PARM3_CORE_SYSCALL(regs);
		return enter_call(CALL_READV, fd, arg1, arg2);
	case OBI_NR_recvmsg:
		arg2 = PT_REGS_PARM3_CORE_SYSCALL(regs);
		return enter_call(arg2 & MSG_PEEK ? CALL_PEEK : CALL_RECVMSG, fd, arg1, 0);
	case OBI_NR_write:
	case OBI_NR_sendto:
		return enter_call(CALL_WRITE, fd, arg1, 0);
	case OBI_NR_writev:
		arg2 = PT_REGS_PARM3_CORE_SYSCALL(regs);
		return enter_call(CALL_WRITEV, fd, arg1, arg2);
	case OBI_NR_sendmsg:
		return enter_call(CALL_SENDMSG, fd, arg1, 0);
	case OBI_NR_sendfile:
		return enter_call(CALL_SENDFILE, fd, 0, 0);
	case OBI_NR_accept:
	case OBI_NR_accept4:
		return enter_call(CALL_ACCEPT, fd, 0, 0);
	case OBI_NR_connect:
		return enter_call(CALL_CONNECT, fd, 0, 0);
	case OBI_NR_close:
		return enter_close(fd);
	case OBI_NR_close_range:
		return enter_close_range();
	case OBI_NR_shutdown:
		return enter_shutdown(fd);
	}
	return 0;
}

SEC("raw_tracepoint/sys_exit")
int raw_sys_exit(struct bpf_raw_tracepoint_args *ctx)
{
	long nr = syscall_nr((struct pt_regs *)ctx->args[0]);

	if (!hooked(nr) || nr == OBI_NR_close || nr == OBI_NR_close_range || nr == OBI_NR_shutdown)
		return nr == OBI_NR_listen ? notice_listen((__s64)ctx->args[1]) : 0;
	return exit_call((__s64)ctx->args[1]);
}

/* ---- fentry/fexit and kprobes on the syscall functions ------------------- */

/* The syscall functions behind the wrappers every kernel obi supports has: their only
 * argument is the user's registers, read as the syscall ABI has them. */
#if defined(__TARGET_ARCH_x86)
#define SYS_FUNC(name) "__x64_sys_" #name
#elif defined(__TARGET_ARCH_arm64)
#define SYS_FUNC(name) "__arm64_sys_" #name
#endif
#define SYS_ARG1(regs) PT_REGS_PARM1_CORE_SYSCALL(regs)
#define SYS_ARG2(regs) PT_REGS_PARM2_CORE_SYSCALL(regs)
#define SYS_ARG3(regs) PT_REGS_PARM3_CORE_SYSCALL(regs)
#define SYS_ARG4(regs) PT_REGS_PARM4_CORE_SYSCALL(regs)

/* A call with nothing to do before it (writes, accept): everything at its exit, with the
 * arguments still at hand, so no pending entry is stored, looked up and deleted. */
static __always_inline int exit_only_call(__u32 kind, __u64 fd, __u64 ptr, __u64 count_arg, __s64 ret)
{
	__u32 pid;
	struct obi_pid_info *info = traced(&pid);

	if (!info)
		return 0;
	if (kind == CALL_ACCEPT)
		on_accept_done(pid, info->gen, ret);
	else
		handle_bytes((__u64)pid << 32 | info->gen, (__u64)kind << 32 | (__u32)fd, ptr, count_arg, ret);
	return 0;
}

/* fentry/fexit (fx_*): BPF trampolines on the syscall functions; only the hooked calls pay.
 * Reads and connect keep an enter (a read ends the exchange before it; connect marks the
 * socket before its handshake); writes and accept need only the exit. */
#define FX_ENTER(name, kind, ptr_arg, count_arg)                                   \
	SEC("fentry/" SYS_FUNC(name))                                              \
	int BPF_PROG(fx_enter_##name, struct pt_regs *regs)                        \
	{                                                                          \
		return enter_call(kind, SYS_ARG1(regs), ptr_arg, count_arg);       \
	}                                                                          \
	SEC("fexit/" SYS_FUNC(name))                                               \
	int BPF_PROG(fx_exit_##name, struct pt_regs *regs, long ret)               \
	{                                                                          \
		return exit_call(ret);                                             \
	}
#define FX_EXIT_ONLY(name, kind, ptr_arg, count_arg)                               \
	SEC("fexit/" SYS_FUNC(name))                                               \
	int BPF_PROG(fx_exit_##name, struct pt_regs *regs, long ret)               \
	{                                                                          \
		return exit_only_call(kind, SYS_ARG1(regs), ptr_arg, count_arg, ret); \
	}

/* kprobes (kp_*): a kprobe at the syscall function's entry, a kretprobe at its return (which
 * has no arguments left: every call is stashed at the enter, as with tracepoints). */
#define KP_CALL(name, kind, ptr_arg, count_arg)                                    \
	SEC("kprobe/" SYS_FUNC(name))                                              \
	int BPF_KPROBE(kp_enter_##name, struct pt_regs *regs)                      \
	{                                                                          \
		return enter_call(kind, SYS_ARG1(regs), ptr_arg, count_arg);       \
	}                                                                          \
	SEC("kretprobe/" SYS_FUNC(name))                                           \
	int BPF_KRETPROBE(kp_exit_##name, long ret)                                \
	{                                                                          \
		return exit_call(ret);                                             \
	}

/* Each hooked call in both sets: reads and connect with an enter, the rest exit-only under
 * fentry; kprobes always both. */
#define HOOK_CALL(name, kind, ptr_arg, count_arg)                                  \
	FX_ENTER(name, kind, ptr_arg, count_arg) KP_CALL(name, kind, ptr_arg, count_arg)
#define HOOK_CALL_AT_EXIT(name, kind, ptr_arg, count_arg)                          \
	FX_EXIT_ONLY(name, kind, ptr_arg, count_arg) KP_CALL(name, kind, ptr_arg, count_arg)
/* A call with nothing to do at its exit (close, shutdown, close_range), in both sets. */
#define HOOK_ENTER(name, call)                                                     \
	SEC("fentry/" SYS_FUNC(name))                                              \
	int BPF_PROG(fx_enter_##name, struct pt_regs *regs)                        \
	{                                                                          \
		return call;                                                       \
	}                                                                          \
	SEC("kprobe/" SYS_FUNC(name))                                              \
	int BPF_KPROBE(kp_enter_##name, struct pt_regs *regs)                      \
	{                                                                          \
		return call;                                                       \
	}

HOOK_CALL(read, CALL_READ, SYS_ARG2(regs), 0)
HOOK_CALL(recvfrom, SYS_ARG4(regs) & MSG_PEEK ? CALL_PEEK : CALL_READ, SYS_ARG2(regs), 0)
HOOK_CALL(readv, CALL_READV, SYS_ARG2(regs), SYS_ARG3(regs))
HOOK_CALL(recvmsg, SYS_ARG3(regs) & MSG_PEEK ? CALL_PEEK : CALL_RECVMSG, SYS_ARG2(regs), 0)
HOOK_CALL(connect, CALL_CONNECT, 0, 0)
HOOK_CALL_AT_EXIT(write, CALL_WRITE, SYS_ARG2(regs), 0)
HOOK_CALL_AT_EXIT(sendto, CALL_WRITE, SYS_ARG2(regs), 0)
HOOK_CALL_AT_EXIT(writev, CALL_WRITEV, SYS_ARG2(regs), SYS_ARG3(regs))
HOOK_CALL_AT_EXIT(sendmsg, CALL_SENDMSG, SYS_ARG2(regs), 0)
HOOK_CALL_AT_EXIT(sendfile64, CALL_SENDFILE, 0, 0)
HOOK_CALL_AT_EXIT(accept, CALL_ACCEPT, 0, 0)
HOOK_CALL_AT_EXIT(accept4, CALL_ACCEPT, 0, 0)
HOOK_ENTER(close, enter_close(SYS_ARG1(regs)))
HOOK_ENTER(shutdown, enter_shutdown(SYS_ARG1(regs)))
HOOK_ENTER(close_range, enter_close_range())

SEC("fexit/" SYS_FUNC(listen))
int BPF_PROG(fx_exit_listen, struct pt_regs *regs, long ret)
{
	return notice_listen(ret);
}

SEC("kretprobe/" SYS_FUNC(listen))
int BPF_KRETPROBE(kp_exit_listen, long ret)
{
	return notice_listen(ret);
}

/* ---- processes and sockets (raw tracepoints in both modes) -------------- */

SEC("raw_tracepoint/sched_process_fork")
int common_fork(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *child = (struct task_struct *)ctx->args[1];
	struct obi_pid_info *parent_info;
	struct obi_pid_info info = {};
	__u32 parent, pid;

	if (BPF_CORE_READ(child, pid) != BPF_CORE_READ(child, tgid)) {
		/* a new thread: it works for the request its creator serves, if any */
		__u64 id = bpf_get_current_pid_tgid();
		struct served *v = bpf_map_lookup_elem(&serving, &id);

		if (v) {
			__u64 child_id = (__u64)BPF_CORE_READ(child, tgid) << 32 | BPF_CORE_READ(child, pid);
			struct served copy = *v;

			copy.inflight = copy.inflight == 1; /* it serves that one request, or none */
			bpf_map_update_elem(&serving, &child_id, &copy, BPF_ANY);
		}
		return 0;
	}
	parent_info = traced(&parent);
	if (!parent_info)
		return 0;
	pid = task_pid_in_ns(child);
	if (!pid)
		return 0;
	info.gen = bpf_get_prandom_u32();
	info.parent = parent;
	info.flags = OBI_PID_INHERITED;
	if (bpf_map_update_elem(&pid_filter, &pid, &info, BPF_ANY)) {
		count(OBI_COUNTER_PID_FILTER_FULL);
		return 0;
	}
	emit_process(OBI_PROCESS_FORK, pid, parent, NULL);
	return 0;
}

SEC("raw_tracepoint/sched_process_exec")
int common_exec(struct bpf_raw_tracepoint_args *ctx)
{
	struct linux_binprm *bprm = (struct linux_binprm *)ctx->args[2];
	const char *path = BPF_CORE_READ(bprm, filename);
	struct obi_pid_info *info;
	__u32 pid;

	if (current_pid(&pid))
		return 0;
	info = bpf_map_lookup_elem(&pid_filter, &pid);
	if (info) {
		/* close-on-exec fds closed without close(): none of the old fds can be trusted */
		info->gen += 1;
		emit_process(OBI_PROCESS_EXEC, pid, 0, path);
		return 0;
	}
	if (trace_execs) {
		struct obi_pid_info fresh = {};

		fresh.gen = bpf_get_prandom_u32();
		fresh.flags = OBI_PID_PROVISIONAL;
		if (bpf_map_update_elem(&pid_filter, &pid, &fresh, BPF_NOEXIST)) {
			count(OBI_COUNTER_PID_FILTER_FULL);
			return 0;
		}
		emit_process(OBI_PROCESS_EXEC, pid, 1, path);
	}
	return 0;
}

SEC("raw_tracepoint/sched_process_exit")
int common_exit(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u32 pid;

	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0; /* other threads of the process live on */
	if (!traced(&pid))
		return 0;
	bpf_map_delete_elem(&pid_filter, &pid);
	emit_process(OBI_PROCESS_EXIT, pid, 0, NULL);
	return 0;
}

/* Any TCP close the process makes, including the ones exit() and close-on-exec make. */
SEC("raw_tracepoint/inet_sock_set_state")
int common_sock_state(struct bpf_raw_tracepoint_args *ctx)
{
	__u64 sk = ctx->args[0];
	int newstate = (int)ctx->args[2];
	struct conn *c;
	struct task_struct *task;
	__u8 reason = OBI_END_CLOSE;

	if (newstate != TCP_FIN_WAIT1 && newstate != TCP_CLOSE && newstate != TCP_LAST_ACK)
		return 0;
	c = bpf_map_lookup_elem(&conns, &sk);
	if (!c || (c->shut && newstate != TCP_CLOSE))
		return 0;
	task = (struct task_struct *)bpf_get_current_task();
	if (BPF_CORE_READ(task, flags) & PF_EXITING)
		reason = OBI_END_EXIT;
	if (c->slot != NO_SLOT)
		end_exchange(c, reason);
	if (c->flags & CONN_FLAG_H2)
		h2_closed(c, sk);
	bpf_map_delete_elem(&conns, &sk);
	return 0;
}

/* ---- TLS libraries (OpenSSL's API): uprobes on the library of traced processes ----
 *
 * The plaintext of SSL_read / SSL_write goes through the same exchanges as the bytes
 * of syscalls, on the socket the SSL object uses (tls_socks); the ciphertext the
 * syscalls move on that socket is not captured (CONN_TLS). User space attaches these
 * programs to each TLS library file (or executable, for OpenSSL linked statically)
 * that a traced process maps, whatever processes map it: the pid filter decides. */

/* An SSL write is about to start a call (a client's, with no request under way on its
 * socket): the call's ids are made now and left for the server at the other end, before
 * the ciphertext leaves (a server, Go's above all, may read it and begin its handler
 * before this write returns); its client exchange takes them when the write returns. */
static __always_inline void tls_call_starts(__u32 pid, __u64 ssl)
{
	struct tls_key key = {.ssl = ssl, .pid = pid};
	struct tls_bind *b = bpf_map_lookup_elem(&tls_socks, &key);
	struct obi_conn_key ck = {.pid = pid};
	struct fd_info *fi;
	struct conn *c;
	struct slot *s;
	struct thread_ids t = {};
	struct peer_key pk = {};
	__u64 id = bpf_get_current_pid_tgid();

	if (!b)
		return;
	ck.fd = b->fd;
	fi = bpf_map_lookup_elem(&fds, &ck);
	c = fi && fi->sk ? bpf_map_lookup_elem(&conns, &fi->sk) : NULL;
	if (!c || c->role != OBI_ROLE_CLIENT)
		return;
	s = slot_at(c->slot);
	if (s && s->st.busy == SLOT_BUSY && s->st.phase == PHASE_REQUEST)
		return; /* more of a request under way */
	t.sk = fi->sk;
	t.ts_ns = bpf_ktime_get_ns();
	call_ids(pid, fi->sk, &t.ids);
	bpf_map_update_elem(&thread_ids, &id, &t, BPF_ANY);
	set_peer_key(&pk, c->local_addr, c->peer_addr, c->local_port, c->peer_port, 0);
	leave_for_server(&pk, &t.ids);
	tcp_ctx_send(fi->sk, &t.ids);
}

static __always_inline int tls_enter(__u32 op, __u64 ssl, __u64 buf, __u64 out)
{
	__u32 pid;
	__u64 id = bpf_get_current_pid_tgid();
	struct tls_thread *t;

	if (!ssl || !traced(&pid))
		return 0;
	t = bpf_map_lookup_elem(&tls_threads, &id);
	if (!t) {
		struct tls_thread fresh = {.last_fd = -1};

		bpf_map_update_elem(&tls_threads, &id, &fresh, BPF_NOEXIST);
		t = bpf_map_lookup_elem(&tls_threads, &id);
		if (!t)
			return 0;
	}
	t->ssl = ssl;
	t->buf = buf;
	t->out = out;
	t->op = op;
	t->last_ssl = ssl;
	if (op == OBI_TLS_WRITE)
		tls_call_starts(pid, ssl);
	return 0;
}

/* int SSL_read(SSL *ssl, void *buf, int num) */
SEC("uprobe")
int tls_read_enter(struct pt_regs *ctx)
{
	return tls_enter(OBI_TLS_READ, PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), 0);
}

/* int SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes) */
SEC("uprobe")
int tls_read_ex_enter(struct pt_regs *ctx)
{
	return tls_enter(OBI_TLS_READ, PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), PT_REGS_PARM4(ctx));
}

/* int SSL_write(SSL *ssl, const void *buf, int num) */
SEC("uprobe")
int tls_write_enter(struct pt_regs *ctx)
{
	return tls_enter(OBI_TLS_WRITE, PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), 0);
}

/* int SSL_write_ex(SSL *ssl, const void *buf, size_t num, size_t *written) */
SEC("uprobe")
int tls_write_ex_enter(struct pt_regs *ctx)
{
	return tls_enter(OBI_TLS_WRITE, PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), PT_REGS_PARM4(ctx));
}

/* int SSL_do_handshake(SSL *ssl), int SSL_shutdown(SSL *ssl) */
SEC("uprobe")
int tls_handshake_enter(struct pt_regs *ctx)
{
	return tls_enter(OBI_TLS_HANDSHAKE, PT_REGS_PARM1(ctx), 0, 0);
}

/* The return of every call above: the plaintext moved, on the SSL object's socket. */
SEC("uretprobe")
int tls_return(struct pt_regs *ctx)
{
	__s64 ret = (__s32)PT_REGS_RC(ctx);
	__u64 id = bpf_get_current_pid_tgid();
	struct tls_thread *t = bpf_map_lookup_elem(&tls_threads, &id);
	struct obi_pid_info *info;
	struct tls_key key = {};
	struct tls_bind *b;
	__u64 buf, out, n = 0;
	__u32 op, fd, pid;

	if (!t || !t->ssl)
		return 0;
	key.ssl = t->ssl;
	buf = t->buf;
	out = t->out;
	op = t->op;
	t->ssl = 0;
	info = traced(&pid);
	if (!info)
		return 0;
	key.pid = pid;
	b = bpf_map_lookup_elem(&tls_socks, &key);
	if (b) {
		fd = b->fd;
	} else if (t->last_fd >= 0 && op != OBI_TLS_WRITE) {
		/* the ciphertext this thread read last is what this call consumed */
		struct tls_bind guess = {.fd = t->last_fd};

		fd = guess.fd;
		bpf_map_update_elem(&tls_socks, &key, &guess, BPF_NOEXIST);
	} else {
		if (op != OBI_TLS_HANDSHAKE && ret > 0)
			count(OBI_COUNTER_TLS_UNBOUND);
		return 0;
	}
	if (op == OBI_TLS_HANDSHAKE)
		return 0;
	if (out) {
		/* the _ex calls return 1 and store the count */
		if (ret != 1 || bpf_probe_read_user(&n, sizeof(n), (void *)out))
			return 0;
	} else if (ret > 0) {
		n = ret;
	}
	if (!n)
		return 0;
	handle_bytes((__u64)pid << 32 | info->gen,
		     (__u64)((op == OBI_TLS_READ ? CALL_READ : CALL_WRITE) | CALL_TLS) << 32 | fd, buf, 0, n);
	return 0;
}

/* void SSL_free(SSL *ssl): its address may come back as another connection's. */
SEC("uprobe")
int tls_free(struct pt_regs *ctx)
{
	struct tls_key key = {.ssl = PT_REGS_PARM1(ctx)};

	if (!key.ssl || !traced(&key.pid))
		return 0;
	bpf_map_delete_elem(&tls_socks, &key);
	return 0;
}

/* ---- nginx: which request an upstream call is made for ---------------------------
 *
 * nginx serves many requests on one thread, so the thread alone does not tell which one
 * a call upstream is for. Every upstream module writes its request with
 * ngx_chain_writer(ctx, in), and ctx names the upstream connection, whose data is the
 * request it is written for (ngx_http_upstream_connect sets it, for new and kept-alive
 * connections alike): its client connection is the server exchange the call is made for.
 * An entry probe only: the write syscalls that follow on that connection start the call. */
#define NGX_WRITER_CONNECTION 16 /* ngx_chain_writer_ctx_t.connection (after out, last) */
#define NGX_CONNECTION_DATA 0    /* ngx_connection_t.data: an upstream connection's request */
#define NGX_CONNECTION_FD 24     /* ngx_connection_t.fd (after data, read, write) */
#define NGX_REQUEST_CONNECTION 8 /* ngx_http_request_t.connection (after uint32_t signature) */

static __always_inline __s32 ngx_fd(__u64 c)
{
	__s32 fd = -1;

	if (!c || bpf_probe_read_user(&fd, sizeof(fd), (void *)(c + NGX_CONNECTION_FD)))
		return -1;
	return fd;
}

SEC("uprobe")
int nginx_chain_writer(struct pt_regs *ctx)
{
	__u64 up = 0, r = 0, down = 0, up_sk, down_sk;
	struct obi_conn_key key = {};
	struct obi_pid_info *info = traced(&key.pid);
	struct upstream_of u = {};
	struct conn *c;
	struct slot *s;
	__s32 up_fd, down_fd;

	if (!info || bpf_probe_read_user(&up, sizeof(up), (void *)(PT_REGS_PARM1(ctx) + NGX_WRITER_CONNECTION)) ||
	    !up || bpf_probe_read_user(&r, sizeof(r), (void *)(up + NGX_CONNECTION_DATA)) || !r ||
	    bpf_probe_read_user(&down, sizeof(down), (void *)(r + NGX_REQUEST_CONNECTION)))
		return 0;
	up_fd = ngx_fd(up);
	down_fd = ngx_fd(down);
	if (up_fd < 0 || down_fd < 0)
		return 0;
	key.fd = (__u32)down_fd;
	c = lookup_conn(&key, info->gen, &down_sk);
	s = c && c->role == OBI_ROLE_SERVER ? slot_at(c->slot) : NULL;
	if (!s || s->st.busy != SLOT_BUSY)
		return 0;
	u.slot = c->slot;
	u.start_ns = s->ev.start_ns;
	key.fd = (__u32)up_fd;
	c = lookup_conn(&key, info->gen, &up_sk);
	if (c && c->role != OBI_ROLE_SERVER) /* a client one, or one found mid-way */
		bpf_map_update_elem(&upstream_for, &up_sk, &u, BPF_ANY);
	return 0;
}

/* ---- Go net/http: uprobes on the functions of a Go binary ----------------------
 *
 * Go passes arguments in registers (ABIInternal, Go 1.17+) and keeps the current
 * goroutine (runtime.g) in a register: a request belongs to a goroutine, not to a
 * thread (a goroutine moves between threads). Returns are probed at each RET
 * instruction of a function, never with uretprobes (Go moves goroutine stacks).
 * Each probe's cookie indexes the binary's struct offsets in `go_offsets`.
 */

#if defined(__TARGET_ARCH_x86)
#define GO_ARG1(x) ((x)->ax)
#define GO_ARG2(x) ((x)->bx)
#define GO_ARG3(x) ((x)->cx)
#define GO_ARG4(x) ((x)->di)
#define GO_G(x) ((x)->r14)
#elif defined(__TARGET_ARCH_arm64)
#define GO_ARG1(x) (((struct user_pt_regs *)(x))->regs[0])
#define GO_ARG2(x) (((struct user_pt_regs *)(x))->regs[1])
#define GO_ARG3(x) (((struct user_pt_regs *)(x))->regs[2])
#define GO_ARG4(x) (((struct user_pt_regs *)(x))->regs[3])
#define GO_G(x) (((struct user_pt_regs *)(x))->regs[28])
#endif

struct go_key {
	__u64 g;
	__u32 pid;
	__u32 pad;
};

/* A server request in flight: the record, and what its end needs. */
struct go_server {
	struct obi_go_http ev;
	__u64 rw;         /* the ResponseWriter's data pointer: *http.response (HTTP/1),
			   * *http.http2responseWriter (HTTP/2) */
	__u32 offsets;
	__u32 status_set; /* the handler wrote its status: later ones do not count */
	__u32 peer_pending; /* its caller's ids (`peers`, over TLS) not there yet when it began */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct obi_go_offsets);
	__uint(max_entries, OBI_GO_OFFSET_SLOTS);
} go_offsets SEC(".maps");

/* goroutine -> the *http.conn it serves (net/http.(*conn).serve) */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct go_key);
	__type(value, __u64);
	__uint(max_entries, 16384);
} go_conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct go_key);
	__type(value, struct go_server);
	__uint(max_entries, 8192);
} go_servers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct go_key);
	__type(value, struct obi_go_http);
	__uint(max_entries, 8192);
} go_clients SEC(".maps");

/* goroutine -> the goroutine that started it (runtime.newproc1); g structs are reused,
 * and a reused one is written again when it starts anew */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct go_key);
	__type(value, __u64);
	__uint(max_entries, 65536);
} go_parents SEC(".maps");

/* thread -> callergp of the runtime.newproc1 it is in (it runs on the thread's g0) */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u64);
	__type(value, __u64);
	__uint(max_entries, 4096);
} go_newproc SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct go_server);
	__uint(max_entries, 1);
} go_scratch SEC(".maps");

static __always_inline struct obi_go_offsets *go_offsets_of(struct pt_regs *ctx, __u32 *idx)
{
	*idx = (__u32)bpf_get_attach_cookie(ctx);
	return bpf_map_lookup_elem(&go_offsets, idx);
}

static __always_inline __u64 go_read_u64(__u64 addr)
{
	__u64 v = 0;

	if (addr)
		bpf_probe_read_user(&v, sizeof(v), (void *)addr);
	return v;
}

/* Copies a Go string (pointer, length at addr) into buf; returns the bytes copied. */
static __always_inline __u32 go_string(__u64 addr, char *buf, __u32 size)
{
	struct {
		__u64 ptr;
		__s64 len;
	} str = {};
	__u64 n;

	if (!addr || bpf_probe_read_user(&str, sizeof(str), (void *)addr) || str.len <= 0 || !str.ptr)
		return 0;
	n = str.len < size ? (__u64)str.len : size;
	if (!n)
		return 0;
	/* the bound last, in 64 bits, right before the read: Debian 6.1's verifier dropped it
	 * when a 32-bit test of n came after it (size=255 into a 192-byte field) */
	clamp_umax(n, size);
	if (bpf_probe_read_user(buf, n, (void *)str.ptr))
		return 0;
	return (__u32)n;
}

static __always_inline void go_emit(struct obi_go_http *ev)
{
	if (bpf_ringbuf_output(&events, ev, sizeof(*ev), wakeup_flag(sizeof(*ev))))
		count(OBI_COUNTER_EVENTS_LOST);
	else
		count(OBI_COUNTER_EXCHANGES);
}

/* net/http.(*conn).serve(c *conn, ctx): the goroutine that serves one connection */
SEC("uprobe")
int go_conn_serve(struct pt_regs *ctx)
{
	struct go_key key = {.g = GO_G(ctx)};
	__u64 c = GO_ARG1(ctx);

	if (!traced(&key.pid))
		return 0;
	bpf_map_update_elem(&go_conns, &key, &c, BPF_ANY);
	return 0;
}

SEC("uprobe")
int go_conn_serve_ret(struct pt_regs *ctx)
{
	struct go_key key = {.g = GO_G(ctx)};

	if (!traced(&key.pid))
		return 0;
	bpf_map_delete_elem(&go_conns, &key);
	return 0;
}

/* The connection a handler's goroutine (or one of its starters) serves: its addresses.
 * Returns its struct sock * (0: not found). */
static __always_inline __u64 go_server_conn(struct go_key key, struct obi_go_offsets *off,
					    struct obi_go_http *ev)
{
	__u64 *c = NULL, fd_ptr, conn_ptr, sk;
	__s64 fd = -1;
	struct conn addr = {};

	for (int i = 0; i < OBI_GO_PARENT_DEPTH && key.g; i++) {
		__u64 *parent;

		c = bpf_map_lookup_elem(&go_conns, &key);
		if (c)
			break;
		parent = bpf_map_lookup_elem(&go_parents, &key);
		key.g = parent ? *parent : 0;
	}
	if (!c)
		return 0;
	/* c.rwc is a net.Conn: a *tls.Conn once tlsState is set, else a *net.TCPConn */
	conn_ptr = go_read_u64(*c + off->conn_rwc + 8);
	if (go_read_u64(*c + off->conn_tls_state)) {
		ev->flags |= OBI_GO_FLAG_TLS;
		conn_ptr = go_read_u64(conn_ptr + off->tls_conn_conn + 8);
	}
	fd_ptr = go_read_u64(conn_ptr + off->tcp_conn_fd);
	if (!fd_ptr || bpf_probe_read_user(&fd, sizeof(fd), (void *)(fd_ptr + off->netfd_pfd + off->pfd_sysfd)) ||
	    fd < 0 || fd > 0xffffff)
		return 0;
	sk = read_socket((__u32)fd, &addr);
	if (!sk)
		return 0;
	ev->flags |= OBI_GO_FLAG_ADDR;
	ev->family = addr.family;
	ev->local_port = addr.local_port;
	ev->peer_port = addr.peer_port;
	__builtin_memcpy(ev->local_addr, addr.local_addr, 16);
	__builtin_memcpy(ev->peer_addr, addr.peer_addr, 16);
	return sk;
}

/* The ids of a Go server request: those of the exchange the syscalls (or TLS uprobes)
 * captured for it on its connection (its traceparent, or its traced caller on this
 * host), else, over Go's own TLS (no such exchange), its traced caller's by the
 * connection; else a new trace. HTTP/2 (many requests on one connection): a new trace. */
/* The ids a traced caller on this host left for a request over Go's own TLS (by the
 * connection: TLS plaintext has no sequence number), taken once. */
static __always_inline bool go_peer_ids(struct obi_go_http *ev)
{
	struct peer_key key = {};
	struct obi_ids *caller;

	set_peer_key(&key, ev->peer_addr, ev->local_addr, ev->peer_port, ev->local_port, 0);
	caller = bpf_map_lookup_elem(&peers, &key);
	if (!caller)
		return false;
	__builtin_memcpy(ev->trace_id, caller->trace_id, 16);
	__builtin_memcpy(ev->parent_span_id, caller->span_id, 8);
	ev->flags |= OBI_GO_FLAG_PARENT;
	bpf_map_delete_elem(&peers, &key);
	return true;
}

/* Returns true when the caller's ids may still come (go_peer_ids, later). */
static __always_inline bool go_server_ids(struct obi_go_http *ev, __u64 sk)
{
	struct conn *c = sk ? bpf_map_lookup_elem(&conns, &sk) : NULL;
	__u32 idx = c ? c->slot : NO_SLOT;
	struct slot *s = slot_at(idx);

	random_bytes(ev->trace_id, 4);
	random_bytes(ev->span_id, 2);
	if (!sk || ev->proto_major != 1)
		return false;
	if (s && s->st.busy == SLOT_BUSY && s->ev.role == OBI_ROLE_SERVER && s->ev.pid == ev->pid) {
		if (!(s->ev.flags & OBI_FLAG_IDS))
			served_ids(idx);
		__builtin_memcpy(ev->trace_id, s->st.ids.trace_id, 16);
		__builtin_memcpy(ev->span_id, s->st.ids.span_id, 8);
		__builtin_memcpy(ev->parent_span_id, s->st.ids.parent_span_id, 8);
		if (*(__u64 *)ev->parent_span_id)
			ev->flags |= OBI_GO_FLAG_PARENT;
		return false;
	}
	if (tcp_ctx_take(sk, ev->trace_id, ev->parent_span_id)) {
		ev->flags |= OBI_GO_FLAG_PARENT;
		return false;
	}
	/* the caller's end may leave them only after this handler began (its SSL_write returns
	 * after Go read the request): looked for again before a call and at the end */
	return (ev->flags & OBI_GO_FLAG_TLS) && !go_peer_ids(ev);
}

/* net/http.serverHandler.ServeHTTP(sh, rw ResponseWriter, req *Request): every request
 * a net/http server serves, HTTP/1 and HTTP/2 alike */
SEC("uprobe")
int go_serve_http(struct pt_regs *ctx)
{
	struct go_key key = {.g = GO_G(ctx)};
	struct obi_go_offsets *off;
	struct go_server *s;
	__u64 req = GO_ARG4(ctx), url;
	__u32 zero = 0, idx;

	if (!traced(&key.pid) || !req)
		return 0;
	off = go_offsets_of(ctx, &idx);
	s = bpf_map_lookup_elem(&go_scratch, &zero);
	if (!off || !s)
		return 0;
	__builtin_memset(&s->ev, 0, sizeof(s->ev));
	s->ev.kind = OBI_RECORD_GO_HTTP;
	s->ev.role = OBI_ROLE_SERVER;
	s->ev.pid = key.pid;
	s->ev.goroutine = key.g;
	s->ev.start_ns = bpf_ktime_get_ns();
	s->ev.status = 200; /* a handler that writes nothing answers 200 */
	s->ev.resp_len = 0;
	s->rw = GO_ARG3(ctx);
	s->offsets = idx;
	s->status_set = 0;
	s->ev.method_len = go_string(req + off->req_method, s->ev.method, OBI_GO_METHOD_MAX);
	url = go_read_u64(req + off->req_url);
	s->ev.path_len = go_string(url + off->url_path, s->ev.path, OBI_GO_PATH_MAX);
	s->ev.host_len = go_string(req + off->req_host, s->ev.host, OBI_GO_HOST_MAX);
	s->ev.proto_major = (__u8)go_read_u64(req + off->req_proto_major);
	s->ev.req_len = (__s64)go_read_u64(req + off->req_content_length);
	s->peer_pending = go_server_ids(&s->ev, go_server_conn(key, off, &s->ev));
	bpf_map_update_elem(&go_servers, &key, s, BPF_ANY);
	return 0;
}

SEC("uprobe")
int go_serve_http_ret(struct pt_regs *ctx)
{
	struct go_key key = {.g = GO_G(ctx)};
	struct obi_go_offsets *off;
	struct go_server *s;

	if (!traced(&key.pid))
		return 0;
	s = bpf_map_lookup_elem(&go_servers, &key);
	if (!s)
		return 0;
	s->ev.end_ns = bpf_ktime_get_ns();
	if (s->peer_pending)
		go_peer_ids(&s->ev);
	off = bpf_map_lookup_elem(&go_offsets, &s->offsets);
	if (off && s->ev.proto_major == 2)
		s->ev.resp_len = (__s64)go_read_u64(go_read_u64(s->rw + off->h2_rws) + off->h2_wrote_bytes);
	else if (off)
		s->ev.resp_len = (__s64)go_read_u64(s->rw + off->response_written);
	go_emit(&s->ev);
	bpf_map_delete_elem(&go_servers, &key);
	return 0;
}

/* net/http.(*response).WriteHeader(w, code) (HTTP/1) and
 * net/http.(*http2responseWriter).WriteHeader(w, code) (HTTP/2): the status. A handler
 * that writes none answers 200; 1xx interim statuses do not count. */
SEC("uprobe")
int go_write_header(struct pt_regs *ctx)
{
	struct go_key key = {.g = GO_G(ctx)};
	struct go_server *s;
	__u64 code = GO_ARG2(ctx);

	if (!traced(&key.pid))
		return 0;
	s = bpf_map_lookup_elem(&go_servers, &key);
	if (!s || s->status_set || GO_ARG1(ctx) != s->rw || code < 200 || code > 999)
		return 0; /* the first status written is the response's */
	s->ev.status = (__u16)code;
	s->status_set = 1;
	return 0;
}

/* The server request a goroutine serves, or the one of the goroutine that started it. */
static __always_inline struct go_server *go_serving(struct go_key key)
{
	for (int i = 0; i < OBI_GO_PARENT_DEPTH && key.g; i++) {
		struct go_server *s = bpf_map_lookup_elem(&go_servers, &key);
		__u64 *parent;

		if (s)
			return s;
		parent = bpf_map_lookup_elem(&go_parents, &key);
		key.g = parent ? *parent : 0;
	}
	return NULL;
}

/* A Go call's ids by its *http.Request, for the goroutine that writes the request */
struct go_req_key {
	__u64 req;
	__u32 pid;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct go_req_key);
	__type(value, struct obi_ids);
	__uint(max_entries, 8192);
} go_reqs SEC(".maps");

/* net/http.(*Transport).roundTrip(t, req *Request) (*Response, error): a client call */
SEC("uprobe")
int go_round_trip(struct pt_regs *ctx)
{
	struct go_key key = {.g = GO_G(ctx)};
	struct obi_go_offsets *off;
	struct go_server *scratch, *parent;
	struct obi_go_http *ev;
	__u64 req = GO_ARG2(ctx), url;
	__u32 zero = 0, idx;

	if (!traced(&key.pid) || !req)
		return 0;
	off = go_offsets_of(ctx, &idx);
	scratch = bpf_map_lookup_elem(&go_scratch, &zero);
	if (!off || !scratch)
		return 0;
	ev = &scratch->ev;
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->kind = OBI_RECORD_GO_HTTP;
	ev->role = OBI_ROLE_CLIENT;
	ev->pid = key.pid;
	ev->goroutine = key.g;
	ev->start_ns = bpf_ktime_get_ns();
	ev->pad1 = (__u16)idx; /* the offsets, for the return */
	ev->method_len = go_string(req + off->req_method, ev->method, OBI_GO_METHOD_MAX);
	url = go_read_u64(req + off->req_url);
	ev->scheme_len = go_string(url + off->url_scheme, ev->scheme, OBI_GO_SCHEME_MAX);
	ev->host_len = go_string(url + off->url_host, ev->host, OBI_GO_HOST_MAX);
	ev->path_len = go_string(url + off->url_path, ev->path, OBI_GO_PATH_MAX);
	ev->req_len = (__s64)go_read_u64(req + off->req_content_length);
	if (ev->scheme_len == 5 && ev->scheme[4] == 's')
		ev->flags |= OBI_GO_FLAG_TLS;
	parent = go_serving(key);
	if (parent && parent->peer_pending && go_peer_ids(&parent->ev))
		parent->peer_pending = 0;
	if (parent) {
		ev->flags |= OBI_GO_FLAG_PARENT;
		__builtin_memcpy(ev->trace_id, parent->ev.trace_id, 16);
		__builtin_memcpy(ev->parent_span_id, parent->ev.span_id, 8);
		random_bytes(ev->span_id, 2);
	} else {
		random_bytes(ev->trace_id, 4);
		random_bytes(ev->span_id, 2);
	}
	bpf_map_update_elem(&go_clients, &key, ev, BPF_ANY);
	{
		struct go_req_key rk = {.req = req, .pid = key.pid};
		struct obi_ids ids = {};

		__builtin_memcpy(ids.trace_id, ev->trace_id, 16);
		__builtin_memcpy(ids.span_id, ev->span_id, 8);
		__builtin_memcpy(ids.parent_span_id, ev->parent_span_id, 8);
		bpf_map_update_elem(&go_reqs, &rk, &ids, BPF_ANY);
	}
	return 0;
}

/* net/http.(*Request).write(r, w io.Writer, ...): an HTTP/1 request going out, on the
 * connection's writing goroutine; the bytes this thread writes next are that call's
 * (`thread_ids`): its traceparent header, and its ids for the server at the other end. */
SEC("uprobe")
int go_request_write(struct pt_regs *ctx)
{
	struct go_req_key rk = {.req = GO_ARG1(ctx)};
	struct thread_ids t = {};
	struct obi_ids *ids;
	__u64 id = bpf_get_current_pid_tgid();

	if (!traced(&rk.pid))
		return 0;
	ids = bpf_map_lookup_elem(&go_reqs, &rk);
	if (!ids)
		return 0;
	t.ts_ns = bpf_ktime_get_ns();
	t.ids = *ids;
	bpf_map_update_elem(&thread_ids, &id, &t, BPF_ANY);
	return 0;
}

SEC("uprobe")
int go_round_trip_ret(struct pt_regs *ctx)
{
	struct go_key key = {.g = GO_G(ctx)};
	struct obi_go_offsets *off;
	struct obi_go_http *ev;
	__u64 resp = GO_ARG1(ctx);
	__u32 idx;

	if (!traced(&key.pid))
		return 0;
	ev = bpf_map_lookup_elem(&go_clients, &key);
	if (!ev)
		return 0;
	ev->end_ns = bpf_ktime_get_ns();
	idx = ev->pad1;
	ev->pad1 = 0;
	off = bpf_map_lookup_elem(&go_offsets, &idx);
	ev->resp_len = -1;
	if (off && resp) {
		ev->status = (__u16)go_read_u64(resp + off->resp_status_code);
		ev->resp_len = (__s64)go_read_u64(resp + off->resp_content_length);
	}
	go_emit(ev);
	bpf_map_delete_elem(&go_clients, &key);
	return 0;
}

/* crypto/tls.(*Conn).Read and .Write (c *Conn, b []byte) (int, error): the plaintext of
 * Go's own TLS, into the same exchanges as syscall bytes (on c's socket). The goroutines
 * of a net/http server connection are left out: the net/http probes report them. */
struct go_tls_call {
	__u64 conn;
	__u64 buf;
	__u32 kind; /* CALL_READ or CALL_WRITE */
	__u32 offsets;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct go_key);
	__type(value, struct go_tls_call);
	__uint(max_entries, 16384);
} go_tls_calls SEC(".maps");

static __always_inline bool go_serves_http(struct go_key key)
{
	for (int i = 0; i < OBI_GO_PARENT_DEPTH && key.g; i++) {
		__u64 *parent;

		if (bpf_map_lookup_elem(&go_conns, &key))
			return true;
		parent = bpf_map_lookup_elem(&go_parents, &key);
		key.g = parent ? *parent : 0;
	}
	return false;
}

static __always_inline int go_tls_enter(struct pt_regs *ctx, __u32 kind)
{
	struct go_key key = {.g = GO_G(ctx)};
	struct go_tls_call call = {.conn = GO_ARG1(ctx), .buf = GO_ARG2(ctx), .kind = kind};

	if (!traced(&key.pid) || go_serves_http(key))
		return 0;
	call.offsets = (__u32)bpf_get_attach_cookie(ctx);
	bpf_map_update_elem(&go_tls_calls, &key, &call, BPF_ANY);
	return 0;
}

SEC("uprobe")
int go_tls_read(struct pt_regs *ctx)
{
	return go_tls_enter(ctx, CALL_READ);
}

SEC("uprobe")
int go_tls_write(struct pt_regs *ctx)
{
	return go_tls_enter(ctx, CALL_WRITE);
}

SEC("uprobe")
int go_tls_ret(struct pt_regs *ctx)
{
	struct go_key key = {.g = GO_G(ctx)};
	struct obi_pid_info *info = traced(&key.pid);
	struct go_tls_call *call;
	struct obi_go_offsets *off;
	__s64 n = (__s64)GO_ARG1(ctx), fd = -1;
	__u64 tcp, netfd, buf;
	__u32 kind;

	if (!info)
		return 0;
	call = bpf_map_lookup_elem(&go_tls_calls, &key);
	if (!call)
		return 0;
	off = bpf_map_lookup_elem(&go_offsets, &call->offsets);
	tcp = off ? go_read_u64(call->conn + off->tls_conn_conn + 8) : 0; /* c.conn: a net.Conn */
	netfd = off ? go_read_u64(tcp + off->tcp_conn_fd) : 0;
	buf = call->buf;
	kind = call->kind;
	bpf_map_delete_elem(&go_tls_calls, &key);
	if (n <= 0 || !netfd || !off ||
	    bpf_probe_read_user(&fd, sizeof(fd), (void *)(netfd + off->netfd_pfd + off->pfd_sysfd)) || fd < 0 ||
	    fd > 0xffffff) {
		if (n > 0)
			count(OBI_COUNTER_TLS_UNBOUND);
		return 0;
	}
	handle_bytes((__u64)key.pid << 32 | info->gen, (__u64)(kind | CALL_TLS) << 32 | (__u32)fd, buf, 0, n);
	return 0;
}

/* runtime.newproc1(fn, callergp *g, callerpc) *g: who started each goroutine */
SEC("uprobe")
int go_newproc1(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid(), caller = GO_ARG2(ctx);
	__u32 pid;

	if (!traced(&pid))
		return 0;
	bpf_map_update_elem(&go_newproc, &id, &caller, BPF_ANY);
	return 0;
}

SEC("uprobe")
int go_newproc1_ret(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u64 *caller = bpf_map_lookup_elem(&go_newproc, &id);
	struct go_key key = {.g = GO_ARG1(ctx)};
	__u32 pid;

	if (!caller || !traced(&pid))
		return 0;
	key.pid = pid;
	if (key.g)
		bpf_map_update_elem(&go_parents, &key, caller, BPF_ANY);
	bpf_map_delete_elem(&go_newproc, &id);
	return 0;
}

/* ---- the sweep: user space runs it once per tick (BPF_PROG_TEST_RUN) ---- */

const volatile __u32 slot_count = 2048; /* entries of `slots` */

#define SWEEP_WINDOW 256 /* slots per run without bpf_loop (the cursor rotates) */

/* One slot (a global function: verified once, not once per loop iteration). */
SEC("sockops")
int propagation_sockops(struct bpf_sock_ops *skops)
{
	struct bpf_sock *bsk = skops->sk;
	struct tcp_sock *tp;
	struct tcp_ctx *ctx;
	__u8 opt[TCP_OPT_LEN] = {TCP_OPT_KIND, 4, TCP_OPT_MAGIC0, TCP_OPT_MAGIC1};
	__u64 key;

	if (!bsk)
		return 1;
	tp = bpf_skc_to_tcp_sock(bsk);
	if (!tp)
		return 1;
	key = (__u64)tp;
	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		/* a connection a traced process opened: its requests are followed */
		if (!bpf_map_lookup_elem(&connecting, &key))
			return 1;
		bpf_map_delete_elem(&connecting, &key);
		bpf_sock_hash_update(skops, &msg_socks, &key, BPF_NOEXIST);
		if (propagate_tcp)
			bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
							 BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG);
		return 1;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		/* any accepted connection: called back only for packets with an option the
		 * kernel does not know (ours), so the rest cost nothing */
		if (propagate_tcp)
			bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
							 BPF_SOCK_OPS_PARSE_UNKNOWN_HDR_OPT_CB_FLAG);
		return 1;
	case BPF_SOCK_OPS_HDR_OPT_LEN_CB:
		/* no packet (the MSS being computed): the room is kept, so a full-size first
		 * packet with the option still fits the path */
		ctx = bpf_map_lookup_elem(&tcp_ctx_out, &key);
		if (!skops->skb_tcp_flags || (ctx && ctx->pending && skops->skb_len))
			bpf_reserve_hdr_opt(skops, TCP_OPT_LEN, 0);
		return 1;
	case BPF_SOCK_OPS_WRITE_HDR_OPT_CB:
		ctx = bpf_map_lookup_elem(&tcp_ctx_out, &key);
		if (!ctx || !ctx->pending || !skops->skb_len)
			return 1;
		opt[1] = TCP_OPT_LEN;
		__builtin_memcpy(opt + 4, ctx->ids.trace_id, 16);
		__builtin_memcpy(opt + 20, ctx->ids.span_id, 8);
		if (bpf_store_hdr_opt(skops, opt, TCP_OPT_LEN, 0) == 0) {
			ctx->pending = 0;
			count(OBI_COUNTER_TCP_CONTEXT_SENT);
		}
		return 1;
	case BPF_SOCK_OPS_PARSE_HDR_OPT_CB:
		if (bpf_load_hdr_opt(skops, opt, TCP_OPT_LEN, 0) == TCP_OPT_LEN && opt[1] == TCP_OPT_LEN) {
			struct tcp_ctx in = {};

			__builtin_memcpy(in.ids.trace_id, opt + 4, 16);
			__builtin_memcpy(in.ids.span_id, opt + 20, 8);
			bpf_map_update_elem(&tcp_ctx_in, &key, &in, BPF_ANY);
			count(OBI_COUNTER_TCP_CONTEXT_RECEIVED);
		}
		return 1;
	}
	return 1;
}

static __always_inline __u8 hex_digit(__u8 v)
{
	return v < 10 ? '0' + v : 'a' + v - 10;
}

/* Whether words 8-byte words at a and b are equal. */
static __always_inline bool same_bytes(const __u8 *a, const __u8 *b, int words)
{
	for (int i = 0; i < words; i++) {
		__u64 x, y;

		__builtin_memcpy(&x, a + 8 * i, 8);
		__builtin_memcpy(&y, b + 8 * i, 8);
		if (x != y)
			return false;
	}
	return true;
}

/* A request that has a traceparent already. A proxy forwarding the one of the request it
 * serves: obi writes its call's span over the parent id, in place (one header still). An
 * application's own (an OpenTelemetry SDK's): it stays, and the call's client span is the
 * one it names. Either way the call's client exchange takes those ids (thread_ids). */
static __always_inline int kept_traceparent(struct sk_msg_md *msg, struct scratch *sc, struct line_scan *scan,
					    struct thread_ids *t, __u32 pid, __u64 id)
{
	struct slot *served;
	__u32 at = scan->tp_at;
	void *data, *data_end;

	if (at + 55 > scan->n)
		return 0;
	clamp_umax(at, MSG_SCAN - 64);
	if (sc->buf[at] != '0' || sc->buf[at + 1] != '0' || sc->buf[at + 2] != '-' ||
	    !parse_traceparent(sc->buf + at + 3, t->ids.trace_id, t->ids.span_id))
		return 0;
	t->seq = tcp_seq(t->sk, true);
	served = call_parent(pid, t->sk);
	if (served && same_bytes(served->st.ids.trace_id, t->ids.trace_id, 2)) {
		__builtin_memcpy(t->ids.parent_span_id, served->st.ids.span_id, 8);
		if (propagate_headers && same_bytes(served->st.ids.parent_span_id, t->ids.span_id, 1)) {
			/* the served request's own traceparent, forwarded: this call is a new span */
			__u8 *hex = sc->buf + MSG_SCAN;

			random_ids(&t->ids, false);
			for (int i = 0; i < 8; i++) {
				hex[2 * i] = hex_digit(t->ids.span_id[i] >> 4);
				hex[2 * i + 1] = hex_digit(t->ids.span_id[i] & 15);
			}
			at += 36; /* "00-" 32 hex "-" */
			if (bpf_msg_pull_data(msg, at, at + 16, 0))
				return 0;
			data = (void *)(long)msg->data;
			data_end = (void *)(long)msg->data_end;
			if (data + 16 > data_end)
				return 0;
			__builtin_memcpy(data, hex, 16);
			count(OBI_COUNTER_TRACEPARENT_ADDED);
		}
	}
	bpf_map_update_elem(&thread_ids, &id, t, BPF_ANY);
	return 1;
}

SEC("sk_msg")
int propagation_msg(struct sk_msg_md *msg)
{
	__u64 id = bpf_get_current_pid_tgid(), now = bpf_ktime_get_ns(), sk;
	struct line_scan scan = {.first_lf = -1, .tp_at = -1};
	struct thread_ids t = {}, *pending;
	struct tcp_sock *tp;
	struct conn *c;
	struct slot *s;
	struct scratch *sc;
	__u8 *hdr;
	void *data, *data_end;
	__u32 pid, at, n = msg->size;

	if (!traced(&pid) || n < 16 || !msg->sk)
		return SK_PASS;
	tp = bpf_skc_to_tcp_sock(msg->sk);
	if (!tp)
		return SK_PASS;
	sk = (__u64)tp;
	pending = bpf_map_lookup_elem(&thread_ids, &id);
	if (pending && now - pending->ts_ns >= THREAD_IDS_TTL_NS)
		pending = NULL;
	if (pending && pending->sk == sk)
		return SK_PASS; /* the rest of a request this call already gave a header */
	c = bpf_map_lookup_elem(&conns, &sk);
	if (!c || c->kind != CONN_TCP || c->role != OBI_ROLE_CLIENT)
		return SK_PASS;
	s = slot_at(c->slot);
	if (s && s->st.busy == SLOT_BUSY && s->st.phase == PHASE_REQUEST)
		return SK_PASS; /* more of a request under way: its body */
	if (n > MSG_SCAN)
		n = MSG_SCAN;
	if (bpf_msg_pull_data(msg, 0, n, 0))
		return SK_PASS;
	data = (void *)(long)msg->data;
	data_end = (void *)(long)msg->data_end;
	if (data + 16 > data_end || !http1_is_request(data))
		return SK_PASS;
	sc = scan_scratch();
	if (!sc)
		return SK_PASS;
	scan.n = data_end - data;
	clamp_umax(scan.n, MSG_SCAN);
	if (!use_bpf_loop || bpf_probe_read_kernel(sc->buf, scan.n, data))
		return SK_PASS;
	sc->pos = 0;
	bpf_loop(MSG_SCAN / 8 + 256, line_scan_step, &scan, 0);
	t.sk = sk;
	t.ts_ns = now;
	if (scan.tp_at >= 0) {
		if (kept_traceparent(msg, sc, &scan, &t, pid, id))
			tcp_ctx_send(sk, &t.ids);
		return SK_PASS;
	}
	if (scan.first_lf < 0) {
		count(OBI_COUNTER_TRACEPARENT_SKIPPED);
		return SK_PASS;
	}
	if (pending && !pending->sk)
		t.ids = pending->ids; /* Go: the call whose request this thread writes */
	else
		call_ids(pid, sk, &t.ids);
	t.sk = sk;
	t.ts_ns = now;
	t.seq = BPF_CORE_READ(tp, write_seq);
	tcp_ctx_send(sk, &t.ids);
	if (!propagate_headers) {
		/* the context goes in a TCP option only (ebpf.context_propagation: tcp) */
		bpf_map_update_elem(&thread_ids, &id, &t, BPF_ANY);
		return SK_PASS;
	}
	hdr = sc->buf + MSG_SCAN; /* past the request's copy: room for the header's text */
	for (int i = 0; i < 16; i++) {
		hdr[16 + 2 * i] = hex_digit(t.ids.trace_id[i] >> 4);
		hdr[17 + 2 * i] = hex_digit(t.ids.trace_id[i] & 15);
	}
	for (int i = 0; i < 8; i++) {
		hdr[49 + 2 * i] = hex_digit(t.ids.span_id[i] >> 4);
		hdr[50 + 2 * i] = hex_digit(t.ids.span_id[i] & 15);
	}
	__builtin_memcpy(hdr, "Traceparent: 00-", 16);
	hdr[48] = '-';
	__builtin_memcpy(hdr + 65, "-01\r\n", 5);
	at = scan.first_lf + 1;
	clamp_umax(at, MSG_SCAN);
	if (bpf_msg_push_data(msg, at, TP_HEADER_LEN, 0)) {
		count(OBI_COUNTER_TRACEPARENT_SKIPPED);
		return SK_PASS;
	}
	/* One piece again: the kernel sends each piece of a message on its own, and a small
	 * piece after another small one unacknowledged waits for the ACK (Nagle, Minshall):
	 * the peer's delayed ACK would hold the rest of the request for 40 ms. */
	n = msg->size;
	if (n > MSG_JOIN)
		n = MSG_JOIN;
	if (bpf_msg_pull_data(msg, 0, n, 0) == 0) {
		data = (void *)(long)msg->data;
		data_end = (void *)(long)msg->data_end;
		if (data + at + TP_HEADER_LEN > data_end)
			goto undo;
		__builtin_memcpy(data + at, hdr, TP_HEADER_LEN);
	} else {
		if (bpf_msg_pull_data(msg, at, at + TP_HEADER_LEN, 0))
			goto undo;
		data = (void *)(long)msg->data;
		data_end = (void *)(long)msg->data_end;
		if (data + TP_HEADER_LEN > data_end)
			goto undo;
		__builtin_memcpy(data, hdr, TP_HEADER_LEN);
	}
	bpf_map_update_elem(&thread_ids, &id, &t, BPF_ANY);
	count(OBI_COUNTER_TRACEPARENT_ADDED);
	return SK_PASS;
undo:
	/* the room made could not be written: take it out again, send the request as it was */
	bpf_msg_pop_data(msg, at, TP_HEADER_LEN, 0);
	count(OBI_COUNTER_TRACEPARENT_SKIPPED);
	return SK_PASS;
}

__noinline int sweep_slot(__u32 idx, __u64 now, __u64 idle_ns, __u64 request_timeout_ns, __u32 flush)
{
	struct slot *s = bpf_map_lookup_elem(&slots, &idx);
	__u8 reason = 0;

	if (!s || s->st.busy != SLOT_BUSY)
		return 0;
	if (s->st.phase == PHASE_COMPLETE)
		reason = OBI_END_FRAMED;
	else if (s->st.phase == PHASE_RESPONSE && flush)
		reason = OBI_END_FLUSH;
	else if (s->st.phase == PHASE_RESPONSE && s->st.framing == FRAMING_UNKNOWN && idle_ns &&
		 now - s->st.last_ns >= idle_ns)
		reason = OBI_END_IDLE;
	else if (s->st.phase == PHASE_REQUEST && (s->ev.flags & OBI_FLAG_HTTP) && request_timeout_ns &&
		 now - s->ev.start_ns >= request_timeout_ns)
		reason = OBI_END_TIMEOUT;
	if (reason)
		end_slot(idx, reason);
	return 0;
}

struct sweep_run {
	struct obi_sweep_ctl ctl;
	__u64 now;
};

/* The slots of one busy word (bpf_loop callback). */
static long sweep_word(__u32 w, void *ctx)
{
	struct sweep_run *run = ctx;
	__u64 *word = bpf_map_lookup_elem(&busy_words, &w);
	__u64 bits;

	if (!word)
		return 1;
	bits = *word;
	for (int i = 0; i < 64 && bits; i++) {
		__u32 k = ctz64(bits);

		sweep_slot(w * 64 + k, run->now, run->ctl.idle_ns, run->ctl.request_timeout_ns, run->ctl.flush);
		bits &= bits - 1;
	}
	return 0;
}

/* Emits the exchanges that are over but have no event to end them: a server's
 * complete response it never read after, an unframed response gone quiet, an
 * HTTP request unanswered past its timeout. */
SEC("raw_tp")
int sweep(void *ctx)
{
	__u32 zero = 0;
	struct obi_sweep_ctl *ctl = bpf_map_lookup_elem(&sweep_ctl, &zero);
	struct sweep_run run;

	if (!ctl)
		return 0;
	run.ctl = *ctl;
	run.now = bpf_ktime_get_ns();
	if (use_bpf_loop) {
		bpf_loop((slot_count + 63) / 64, sweep_word, &run, 0);
		return 0;
	}
	for (__u32 i = 0; i < SWEEP_WINDOW; i++) {
		__u32 idx = ctl->cursor + i;

		if (idx >= slot_count)
			break;
		sweep_slot(idx, run.now, run.ctl.idle_ns, run.ctl.request_timeout_ns, run.ctl.flush);
	}
	ctl->cursor = ctl->cursor + SWEEP_WINDOW >= slot_count ? 0 : ctl->cursor + SWEEP_WINDOW;
	return 0;
}
