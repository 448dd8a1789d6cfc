// SPDX-License-Identifier: GPL-2.0
/* Language-agnostic HTTP/1.x server capture on syscall tracepoints.
 *
 * Every syscall of an instrumented process that moves bytes on a socket is
 * seen at enter (arguments stashed per thread) and at exit (bytes known).
 * Per connection (pid, fd) the request bytes read and the response bytes
 * written are accumulated in one map value; when the response is over (the
 * server reads again, closes, or user space sweeps an idle connection) the
 * value goes to the ring buffer as one event.
 *
 * Two sets of entry points share the logic: classic syscall tracepoints
 * (need tracefs to resolve their ids) and raw_tracepoint sys_enter/sys_exit
 * (need nothing). User space autoloads one set.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

#include "http.h"
#include "syscall_nr.h"

char LICENSE[] SEC("license") = "GPL";

#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define EINPROGRESS 115

/* Set by user space between open and load. */
const volatile __u32 req_capture_len = 512;
const volatile __u32 resp_capture_len = 256;
const volatile __u64 wakeup_bytes = 1;   /* wake user space once this much data waits */
const volatile __u64 pidns_dev = 0;      /* obi's pid namespace; 0 = the host's */
const volatile __u64 pidns_ino = 0;

enum call_kind {
	CALL_READ = 1,     /* buf, len */
	CALL_READV,        /* iov, iovcnt */
	CALL_RECVMSG,      /* msghdr */
	CALL_WRITE,
	CALL_WRITEV,
	CALL_SENDMSG,
	CALL_SENDFILE,     /* no buffer */
	CALL_ACCEPT,
	CALL_CONNECT,
};

/* Arguments of a syscall in progress, by host pid_tgid. */
struct pending_call {
	__u32 kind;
	__u32 fd;
	__u64 ptr;
};

/* The in-flight value: an event plus slack so that the verifier can prove
 * a variable-offset append into req_buf stays inside the value. */
struct http_inflight {
	struct obi_http_event ev;
	__u8 slack[OBI_HTTP_REQ_BUF_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u8);
	__uint(max_entries, 4096);
} pid_filter SEC(".maps");

/* LRU: a thread killed inside a syscall never reaches sys_exit; its entry
 * must not fill the table. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, __u64);
	__type(value, struct pending_call);
	__uint(max_entries, 16384);
} pending_calls SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct obi_conn_key);
	__type(value, struct http_inflight);
	__uint(max_entries, 65536);
} conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct http_inflight);
	__uint(max_entries, 1);
} scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, OBI_COUNTER_MAX);
} counters SEC(".maps");

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

/* The current process id as obi sees it, or 0 when it is not instrumented. */
static __always_inline __u32 traced_pid(void)
{
	__u32 pid;

	if (pidns_ino) {
		struct bpf_pidns_info ns = {};
		if (bpf_get_ns_current_pid_tgid(pidns_dev, pidns_ino, &ns, sizeof(ns)))
			return 0;
		pid = ns.tgid;
	} else {
		pid = bpf_get_current_pid_tgid() >> 32;
	}
	return bpf_map_lookup_elem(&pid_filter, &pid) ? pid : 0;
}

static __always_inline void emit(struct obi_http_event *ev)
{
	/* Wake user space only once wakeup_bytes are waiting; its timer drains
	 * whatever is left, so a quiet ring costs no wakeup per event. */
	__u64 pending = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) + sizeof(*ev);
	__u64 flags = pending >= wakeup_bytes ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;

	if (bpf_ringbuf_output(&events, ev, sizeof(*ev), flags))
		count(OBI_COUNTER_EVENTS_LOST);
	else
		count(OBI_COUNTER_EVENTS_SENT);
	ev->state = OBI_HTTP_STATE_IDLE;
}

/* Resolves fd of the current task to its TCP socket, filling the addresses.
 * Returns 0 on success. */
static __always_inline int read_socket(__u32 fd, struct obi_http_event *ev)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds;
	struct file *file = NULL;
	struct socket *sock;
	struct sock *sk;
	__u16 mode;

	if (!fdt || fd >= BPF_CORE_READ(fdt, max_fds))
		return -1;
	fds = BPF_CORE_READ(fdt, fd);
	if (bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]) || !file)
		return -1;
	mode = BPF_CORE_READ(file, f_inode, i_mode);
	if ((mode & S_IFMT) != S_IFSOCK)
		return -1;
	sock = BPF_CORE_READ(file, private_data);
	if (!sock || BPF_CORE_READ(sock, type) != SOCK_STREAM)
		return -1;
	sk = BPF_CORE_READ(sock, sk);
	if (!sk)
		return -1;
	ev->family = BPF_CORE_READ(sk, __sk_common.skc_family);
	ev->local_port = BPF_CORE_READ(sk, __sk_common.skc_num);
	ev->peer_port = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (ev->family == AF_INET) {
		bpf_core_read(ev->local_addr, 4, &sk->__sk_common.skc_rcv_saddr);
		bpf_core_read(ev->peer_addr, 4, &sk->__sk_common.skc_daddr);
	} else if (ev->family == AF_INET6) {
		bpf_core_read(ev->local_addr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_core_read(ev->peer_addr, 16, &sk->__sk_common.skc_v6_daddr);
	} else {
		return -1;
	}
	return 0;
}

/* Starts tracking a server-side connection; returns its map value. */
static __always_inline struct http_inflight *track(__u32 pid, __u32 fd)
{
	struct obi_conn_key key = {.pid = pid, .fd = fd};
	__u32 zero = 0;
	struct http_inflight *fresh = bpf_map_lookup_elem(&scratch, &zero);

	if (!fresh)
		return NULL;
	fresh->ev.kind = OBI_EVENT_KIND_HTTP;
	fresh->ev.state = OBI_HTTP_STATE_IDLE;
	fresh->ev.pid = pid;
	fresh->ev.fd = fd;
	fresh->ev.req_len = 0;
	fresh->ev.resp_len = 0;
	fresh->ev.req_captured = 0;
	fresh->ev.resp_captured = 0;
	if (read_socket(fd, &fresh->ev))
		return NULL;
	if (bpf_map_update_elem(&conns, &key, fresh, BPF_ANY)) {
		count(OBI_COUNTER_CONN_TABLE_FULL);
		return NULL;
	}
	return bpf_map_lookup_elem(&conns, &key);
}

static __always_inline struct http_inflight *lookup_conn(__u32 pid, __u32 fd)
{
	struct obi_conn_key key = {.pid = pid, .fd = fd};

	return bpf_map_lookup_elem(&conns, &key);
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
		break;
	default:
		return 0;
	}
	if (bpf_probe_read_user(&iov, sizeof(iov), (void *)iov_ptr))
		return 0;
	*room = iov.iov_len;
	return (__u64)iov.iov_base;
}

/* Appends up to n user bytes at src to buf, which holds *captured bytes and
 * takes at most min(cap, max); max is a power of two, so masking the offset
 * lets the verifier bound the write (the in-flight value has slack after it). */
static __always_inline void append_user(__u8 *buf, __u16 *captured, __u32 cap, const __u32 max,
					__u64 src, __u64 n)
{
	__u32 off = *captured;
	__u32 len;

	if (cap > max)
		cap = max;
	if (off >= cap)
		return;
	len = cap - off;
	if (n < len)
		len = n;
	off &= max - 1;
	if (len > max)
		return;
	if (bpf_probe_read_user(buf + off, len, (void *)src) == 0)
		*captured = off + len;
}

/* Whether the bytes start like an HTTP/1.x request line. */
static __always_inline bool is_http_request(__u64 src, __u64 n)
{
	char m[8] = {};

	if (n < 4 || bpf_probe_read_user(m, sizeof(m), (void *)src))
		return false;
	switch (m[0]) {
	case 'G': return m[1] == 'E' && m[2] == 'T' && m[3] == ' ';
	case 'P': return (m[1] == 'O' && m[2] == 'S' && m[3] == 'T') ||
			 (m[1] == 'U' && m[2] == 'T' && m[3] == ' ') ||
			 (m[1] == 'A' && m[2] == 'T' && m[3] == 'C');
	case 'H': return m[1] == 'E' && m[2] == 'A' && m[3] == 'D';
	case 'D': return m[1] == 'E' && m[2] == 'L' && m[3] == 'E';
	case 'O': return m[1] == 'P' && m[2] == 'T' && m[3] == 'I';
	case 'C': return m[1] == 'O' && m[2] == 'N' && m[3] == 'N';
	case 'T': return m[1] == 'R' && m[2] == 'A' && m[3] == 'C';
	}
	return false;
}

static __always_inline void on_read_done(__u32 pid, struct pending_call *call, __s64 ret)
{
	struct http_inflight *c;
	__u64 room = 0, src, n;

	if (ret <= 0)
		return;
	src = call_buffer(call, &room);
	n = (__u64)ret < room ? (__u64)ret : room;
	c = lookup_conn(pid, call->fd);
	if (c && c->ev.state == OBI_HTTP_STATE_CLIENT)
		return;
	if (c && c->ev.state == OBI_HTTP_STATE_RESPONDING)
		emit(&c->ev);
	if (!c || c->ev.state == OBI_HTTP_STATE_IDLE) {
		if (!src || !is_http_request(src, n))
			return;
		if (!c)
			c = track(pid, call->fd);
		if (!c)
			return;
		c->ev.state = OBI_HTTP_STATE_READING;
		c->ev.start_ns = bpf_ktime_get_ns();
		c->ev.req_len = 0;
		c->ev.resp_len = 0;
		c->ev.req_captured = 0;
		c->ev.resp_captured = 0;
	}
	c->ev.req_len += ret;
	if (src)
		append_user(c->ev.req_buf, &c->ev.req_captured, req_capture_len,
			    OBI_HTTP_REQ_BUF_MAX, src, n);
}

static __always_inline void on_write_done(__u32 pid, struct pending_call *call, __s64 ret)
{
	struct http_inflight *c;
	__u64 room = 0, src, n;

	if (ret <= 0)
		return;
	c = lookup_conn(pid, call->fd);
	if (!c || (c->ev.state != OBI_HTTP_STATE_READING &&
		   c->ev.state != OBI_HTTP_STATE_RESPONDING))
		return;
	c->ev.state = OBI_HTTP_STATE_RESPONDING;
	c->ev.resp_len += ret;
	c->ev.end_ns = bpf_ktime_get_ns();
	c->ev.tid = (__u32)bpf_get_current_pid_tgid();
	src = call_buffer(call, &room);
	n = (__u64)ret < room ? (__u64)ret : room;
	if (src)
		append_user(c->ev.resp_buf, &c->ev.resp_captured, resp_capture_len,
			    OBI_HTTP_RESP_BUF_MAX, src, n);
}

static __always_inline void on_accept_done(__u32 pid, __s64 ret)
{
	if (ret >= 0)
		track(pid, (__u32)ret);
}

/* An outgoing connection: never the server side of a request. */
static __always_inline void on_connect_done(__u32 pid, __u32 fd, __s64 ret)
{
	struct http_inflight *c;

	if (ret != 0 && ret != -EINPROGRESS)
		return;
	c = track(pid, fd);
	if (c)
		c->ev.state = OBI_HTTP_STATE_CLIENT;
}

/* Any read from a connection whose response was being written ends it. */
static __always_inline void on_read_start(__u32 pid, __u32 fd)
{
	struct http_inflight *c = lookup_conn(pid, fd);

	if (c && c->ev.state == OBI_HTTP_STATE_RESPONDING)
		emit(&c->ev);
}

static __always_inline void on_close(__u32 pid, __u32 fd)
{
	struct obi_conn_key key = {.pid = pid, .fd = fd};
	struct http_inflight *c = bpf_map_lookup_elem(&conns, &key);

	if (!c)
		return;
	if (c->ev.state == OBI_HTTP_STATE_RESPONDING)
		emit(&c->ev);
	bpf_map_delete_elem(&conns, &key);
}

/* Common enter path: remember the arguments until the syscall returns. */
static __always_inline int enter_call(__u32 kind, __u64 fd, __u64 ptr)
{
	__u32 pid = traced_pid();
	__u64 id = bpf_get_current_pid_tgid();
	struct pending_call call = {.kind = kind, .fd = (__u32)fd, .ptr = ptr};

	if (!pid)
		return 0;
	if (kind == CALL_READ || kind == CALL_READV || kind == CALL_RECVMSG)
		on_read_start(pid, (__u32)fd);
	if (bpf_map_update_elem(&pending_calls, &id, &call, BPF_ANY))
		count(OBI_COUNTER_CALL_TABLE_FULL);
	return 0;
}

static __always_inline int enter_close(__u64 fd)
{
	__u32 pid = traced_pid();

	if (pid)
		on_close(pid, (__u32)fd);
	return 0;
}

/* Common exit path for every syscall that enter_call stashed. */
static __always_inline int exit_call(__s64 ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct pending_call *call = bpf_map_lookup_elem(&pending_calls, &id);
	struct pending_call copy;
	__u32 pid;

	if (!call)
		return 0;
	copy = *call;
	bpf_map_delete_elem(&pending_calls, &id);
	pid = traced_pid();
	if (!pid)
		return 0;
	switch (copy.kind) {
	case CALL_READ:
	case CALL_READV:
	case CALL_RECVMSG:
		on_read_done(pid, &copy, ret);
		break;
	case CALL_WRITE:
	case CALL_WRITEV:
	case CALL_SENDMSG:
	case CALL_SENDFILE:
		on_write_done(pid, &copy, ret);
		break;
	case CALL_ACCEPT:
		on_accept_done(pid, ret);
		break;
	case CALL_CONNECT:
		on_connect_done(pid, copy.fd, ret);
		break;
	}
	return 0;
}

/* ---- classic tracepoints (tracefs mounted) ---------------------------- */

#define TP_ENTER(name, kind, ptr_arg)                                              \
	SEC("tracepoint/syscalls/sys_enter_" #name)                                \
	int tp_enter_##name(struct trace_event_raw_sys_enter *ctx)                 \
	{                                                                          \
		return enter_call(kind, ctx->args[0], ptr_arg);                    \
	}                                                                          \
	SEC("tracepoint/syscalls/sys_exit_" #name)                                 \
	int tp_exit_##name(struct trace_event_raw_sys_exit *ctx)                   \
	{                                                                          \
		return exit_call(ctx->ret);                                        \
	}

TP_ENTER(read, CALL_READ, ctx->args[1])
TP_ENTER(recvfrom, CALL_READ, ctx->args[1])
TP_ENTER(readv, CALL_READV, ctx->args[1])
TP_ENTER(recvmsg, CALL_RECVMSG, ctx->args[1])
TP_ENTER(write, CALL_WRITE, ctx->args[1])
TP_ENTER(sendto, CALL_WRITE, ctx->args[1])
TP_ENTER(writev, CALL_WRITEV, ctx->args[1])
TP_ENTER(sendmsg, CALL_SENDMSG, ctx->args[1])
TP_ENTER(accept, CALL_ACCEPT, 0)
TP_ENTER(accept4, CALL_ACCEPT, 0)
TP_ENTER(connect, CALL_CONNECT, 0)

/* sendfile(out_fd, in_fd, ...): the socket is the first argument. */
SEC("tracepoint/syscalls/sys_enter_sendfile64")
int tp_enter_sendfile64(struct trace_event_raw_sys_enter *ctx)
{
	return enter_call(CALL_SENDFILE, ctx->args[0], 0);
}

SEC("tracepoint/syscalls/sys_exit_sendfile64")
int tp_exit_sendfile64(struct trace_event_raw_sys_exit *ctx)
{
	return exit_call(ctx->ret);
}

SEC("tracepoint/syscalls/sys_enter_close")
int tp_enter_close(struct trace_event_raw_sys_enter *ctx)
{
	return enter_close(ctx->args[0]);
}

/* ---- raw tracepoints (no tracefs needed) -------------------------------- */

SEC("raw_tracepoint/sys_enter")
int raw_sys_enter(struct bpf_raw_tracepoint_args *ctx)
{
	struct pt_regs *regs = (struct pt_regs *)ctx->args[0];
	long nr = (long)ctx->args[1];
	__u64 fd, arg1;

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
		break;
	default:
		return 0;
	}
	fd = PT_REGS_PARM1_CORE_SYSCALL(regs);
	arg1 = PT_REGS_PARM2_CORE_SYSCALL(regs);
	switch (nr) {
	case OBI_NR_read:
	case OBI_NR_recvfrom:
		return enter_call(CALL_READ, fd, arg1);
	case OBI_NR_readv:
		return enter_call(CALL_READV, fd, arg1);
	case OBI_NR_recvmsg:
		return enter_call(CALL_RECVMSG, fd, arg1);
	case OBI_NR_write:
	case OBI_NR_sendto:
		return enter_call(CALL_WRITE, fd, arg1);
	case OBI_NR_writev:
		return enter_call(CALL_WRITEV, fd, arg1);
	case OBI_NR_sendmsg:
		return enter_call(CALL_SENDMSG, fd, arg1);
	case OBI_NR_sendfile:
		return enter_call(CALL_SENDFILE, fd, 0);
	case OBI_NR_accept:
	case OBI_NR_accept4:
		return enter_call(CALL_ACCEPT, fd, 0);
	case OBI_NR_connect:
		return enter_call(CALL_CONNECT, fd, 0);
	case OBI_NR_close:
		return enter_close(fd);
	}
	return 0;
}

SEC("raw_tracepoint/sys_exit")
int raw_sys_exit(struct bpf_raw_tracepoint_args *ctx)
{
	return exit_call((__s64)ctx->args[1]);
}
