/* Records and constants shared by bpf/capture.bpf.c and user space.
 *
 * User space never restates this layout: the CFFI build reads this header,
 * and a test checks it against the BTF of the compiled object. Keep it to
 * fixed-width types, explicit padding, the record kind first, and plain
 * `#define NAME number` constants (the form CFFI's cdef understands).
 */
#ifndef OBI_CAPTURE_H
#define OBI_CAPTURE_H

/* Record kinds (the first byte of every ring buffer record). */
#define OBI_RECORD_EXCHANGE 1
#define OBI_RECORD_PROCESS 2
#define OBI_RECORD_GO_HTTP 3 /* a Go net/http request, from the Go uprobes (struct obi_go_http) */
#define OBI_RECORD_H2 4      /* HTTP/2 frames one side of a connection moved (struct obi_h2) */

/* Largest request / response prefix a record can carry; the bytes actually
 * captured are set at load time (req_capture_len / resp_capture_len). */
#define OBI_REQ_CAPTURE_MAX 4096
#define OBI_RESP_CAPTURE_MAX 1024

/* Which side of the connection the traced process is. */
#define OBI_ROLE_SERVER 1 /* it accepted the connection: it reads requests */
#define OBI_ROLE_CLIENT 2 /* it connected: it writes requests */

/* Why an exchange was emitted (`end_reason`). */
#define OBI_END_FRAMED 1       /* the response is complete by its own framing */
#define OBI_END_NEXT_REQUEST 2 /* the requester sent again */
#define OBI_END_READ 3         /* the server went back to reading */
#define OBI_END_CLOSE 4        /* the connection was closed */
#define OBI_END_EXIT 5         /* closed because the process exited */
#define OBI_END_IDLE 6         /* a response without framing, quiet for the idle timeout */
#define OBI_END_TIMEOUT 7      /* no response within ebpf.http_request_timeout */
#define OBI_END_FLUSH 8        /* obi is stopping */

/* Exchange flags. */
#define OBI_FLAG_HTTP 0x01         /* the request started like an HTTP/1.x request */
#define OBI_FLAG_ROLE_GUESSED 0x02 /* the connection was found mid-way: role from the first bytes */
#define OBI_FLAG_LENGTH_KNOWN 0x04 /* resp_header_len and resp_content_length are valid */
#define OBI_FLAG_CHUNKED 0x08      /* the final response uses chunked transfer coding */
#define OBI_FLAG_STATUS_ONLY 0x10  /* the first response is captured as its first OBI_STATUS_CAPTURE
				    * bytes (the kernel framed it by Content-Length: its length
				    * facts are valid); responses pipelined after it follow whole */
#define OBI_FLAG_TLS 0x20          /* the bytes are TLS plaintext (uprobes), not what the socket carried */
#define OBI_FLAG_IDS 0x40          /* the record ends with a struct obi_ids: the span's ids, set by the
				    * kernel because a call was made while it was served */
#define OBI_FLAG_PARENT 0x80       /* (client) obi_ids.parent_span_id is the span of the request the
				    * calling thread, or the thread that started it, was serving */

/* Bytes of a response captured when its status line is all user space needs. */
#define OBI_STATUS_CAPTURE 16

/* Process events (`event` of struct obi_process). */
#define OBI_PROCESS_FORK 1 /* a traced process forked: the child is traced too */
#define OBI_PROCESS_EXEC 2 /* a traced (or, when asked, any) process called exec */
#define OBI_PROCESS_EXIT 3 /* a traced process exited */
#define OBI_PROCESS_TLS 4  /* a traced process spoke TLS on a socket for the first time: find its TLS library */
#define OBI_PROCESS_LISTEN 5 /* a process not traced listened on a socket (notices): look at it now */

/* Flags of a pid filter entry. */
#define OBI_PID_SELECTED 0x01    /* user space selected this process */
#define OBI_PID_INHERITED 0x02   /* the kernel added it: a child of a traced process */
#define OBI_PID_PROVISIONAL 0x04 /* the kernel added it at exec, until user space decides */
#define OBI_PID_TLS_SEEN 0x08    /* the kernel told user space that it speaks TLS (OBI_PROCESS_TLS) */

/* Slots of the `counters` per-CPU array. */
#define OBI_COUNTER_EVENTS_LOST 0      /* ring buffer full */
#define OBI_COUNTER_EXCHANGES 1        /* exchange records emitted */
#define OBI_COUNTER_CONN_TABLE_FULL 2  /* connection not tracked: `conns` full (`fds` is an LRU cache) */
#define OBI_COUNTER_CALL_TABLE_FULL 3  /* syscall not followed: `pending_calls` full */
#define OBI_COUNTER_SLOTS_FULL 4       /* exchange not captured: every slot in use */
#define OBI_COUNTER_PID_FILTER_FULL 5  /* child or exec not traced: `pid_filter` full */
#define OBI_COUNTER_ORPHAN_BYTES 6     /* a response with no request in flight */
#define OBI_COUNTER_TLS_SKIPPED 7      /* connections left alone: TLS ciphertext */
#define OBI_COUNTER_PROCESS_EVENTS_LOST 8 /* fork/exec/exit records the ring had no room for */
#define OBI_COUNTER_TLS_UNBOUND 9      /* TLS plaintext dropped: its socket is not known */
#define OBI_COUNTER_TLS_EXCHANGES 10   /* exchanges started from TLS plaintext */
#define OBI_COUNTER_TRACEPARENT_ADDED 11   /* outgoing requests obi gave a traceparent header */
#define OBI_COUNTER_TRACEPARENT_SKIPPED 12 /* ... that could not get one (request line too long,
					    * no memory) */
#define OBI_COUNTER_TCP_CONTEXT_SENT 13     /* requests whose first packet carried the context option */
#define OBI_COUNTER_TCP_CONTEXT_RECEIVED 14 /* packets that came with one */
#define OBI_COUNTER_H2_LOST 15         /* HTTP/2 frames (or their records) not captured */
#define OBI_COUNTER_MAX 16

/* Value of a pid filter entry, keyed by the process id in obi's pid namespace. */
struct obi_pid_info {
	__u32 gen;    /* changes when the process's file descriptors stop meaning what they did */
	__u32 parent; /* the traced parent of an inherited process, else 0 */
	__u8 flags;   /* OBI_PID_* */
	__u8 pad[7];
};

/* One request and its response on one connection, as the traced process saw
 * them; followed in the record by req_captured request bytes, then
 * resp_captured response bytes. */
struct obi_exchange {
	__u8 kind;           /* OBI_RECORD_EXCHANGE */
	__u8 role;           /* OBI_ROLE_* */
	__u8 end_reason;     /* OBI_END_* */
	__u8 flags;          /* OBI_FLAG_* */
	__u32 pid;           /* process id in obi's pid namespace */
	__u32 tid;           /* host thread id that began the exchange */
	__u32 fd;            /* the connection's file descriptor in pid */
	__u16 family;        /* AF_INET or AF_INET6 */
	__u16 local_port;    /* host byte order */
	__u16 peer_port;     /* host byte order */
	__u16 req_captured;  /* request bytes that follow this header */
	__u16 resp_captured; /* response bytes that follow them */
	__u16 pad;
	__u32 pad1;
	__u64 start_ns;      /* CLOCK_MONOTONIC: the first request bytes moved */
	__u64 resp_start_ns; /* the first response bytes moved (0: no response) */
	__u64 end_ns;        /* the last response bytes moved (or the end of the request) */
	__u64 req_len;       /* request bytes moved */
	__u64 resp_len;      /* response bytes moved (the final response, after 1xx interim ones) */
	__u64 resp_content_length; /* Content-Length of the final response (OBI_FLAG_LENGTH_KNOWN) */
	__u32 resp_header_len;     /* bytes of its header block, blank line included (same flag) */
	__u32 pad2;
	__u8 local_addr[16]; /* IPv4 in the first 4 bytes, or IPv6 */
	__u8 peer_addr[16];
};

/* A process event; an exec is followed by the executable's path (path_len bytes). */
struct obi_process {
	__u8 kind;     /* OBI_RECORD_PROCESS */
	__u8 event;    /* OBI_PROCESS_* */
	__u16 path_len;
	__u32 pid;     /* process id in obi's pid namespace */
	__u32 parent;  /* fork: the parent; exec: 1 when the kernel traces it provisionally */
	__u32 pad;
	__u64 ts_ns;   /* CLOCK_MONOTONIC */
};

/* TLS library calls the uprobes follow (`op` of a thread's TLS state). */
#define OBI_TLS_READ 1
#define OBI_TLS_WRITE 2
#define OBI_TLS_HANDSHAKE 3 /* SSL_do_handshake, SSL_shutdown: no plaintext, but their syscalls
			     * tell which socket the SSL object uses */

/* Go net/http (struct obi_go_http). */
#define OBI_GO_METHOD_MAX 16
#define OBI_GO_PATH_MAX 192
#define OBI_GO_HOST_MAX 64
#define OBI_GO_SCHEME_MAX 8
#define OBI_GO_FLAG_TLS 0x01    /* served on a TLS connection, or an https:// call */
#define OBI_GO_FLAG_PARENT 0x02 /* parent_span_id (and trace_id) come from the server request of the
				 * goroutine, or of the goroutine that started it */
#define OBI_GO_FLAG_ADDR 0x04   /* the addresses and ports are the connection's */
#define OBI_GO_PARENT_DEPTH 4   /* goroutines walked up to find the request a call is made for */
#define OBI_GO_OFFSET_SLOTS 256 /* Go binaries instrumented at once, two slots each (`go_offsets`) */

/* Struct field offsets of one Go binary (the `go_offsets` array, indexed by the uprobe's
 * cookie); user space reads them from the binary's DWARF or its Go version. */
struct obi_go_offsets {
	__u32 req_method;          /* net/http.Request.Method (string) */
	__u32 req_url;             /* .URL (*url.URL) */
	__u32 req_proto_major;     /* .ProtoMajor (int) */
	__u32 req_content_length;  /* .ContentLength (int64) */
	__u32 req_host;            /* .Host (string) */
	__u32 url_scheme;          /* net/url.URL.Scheme (string) */
	__u32 url_host;            /* .Host (string) */
	__u32 url_path;            /* .Path (string) */
	__u32 resp_status_code;    /* net/http.Response.StatusCode (int) */
	__u32 resp_content_length; /* .ContentLength (int64) */
	__u32 response_written;    /* net/http.response.written (int64) */
	__u32 conn_rwc;            /* net/http.conn.rwc (net.Conn) */
	__u32 conn_tls_state;      /* net/http.conn.tlsState (*tls.ConnectionState) */
	__u32 tls_conn_conn;       /* crypto/tls.Conn.conn (net.Conn) */
	__u32 tcp_conn_fd;         /* net.conn.fd (*netFD) */
	__u32 netfd_pfd;           /* net.netFD.pfd (poll.FD) */
	__u32 pfd_sysfd;           /* internal/poll.FD.Sysfd (int) */
	__u32 h2_rws;              /* net/http.http2responseWriter.rws (*http2responseWriterState) */
	__u32 h2_wrote_bytes;      /* net/http.http2responseWriterState.wroteBytes (int64) */
	__u32 pad;
};

/* One Go net/http request: a handler served (server) or a Transport call (client). */
struct obi_go_http {
	__u8 kind;        /* OBI_RECORD_GO_HTTP */
	__u8 role;        /* OBI_ROLE_SERVER or OBI_ROLE_CLIENT */
	__u8 flags;       /* OBI_GO_FLAG_* */
	__u8 proto_major; /* 1 or 2 (server) */
	__u32 pid;
	__u16 status;     /* 0: no response (a client call that failed) */
	__u16 family;
	__u16 local_port;
	__u16 peer_port;
	__u8 method_len;
	__u8 scheme_len;
	__u8 host_len;
	__u8 pad;
	__u16 path_len;
	__u16 pad1;
	__u64 start_ns;
	__u64 end_ns;
	__s64 req_len;    /* request body: Content-Length (-1: unknown) */
	__s64 resp_len;   /* response body: the bytes the handler wrote (server), Content-Length (client; -1) */
	__u64 goroutine;  /* the runtime.g of the handler or the caller */
	__u8 trace_id[16];
	__u8 span_id[8];
	__u8 parent_span_id[8];
	__u8 local_addr[16];
	__u8 peer_addr[16];
	char method[OBI_GO_METHOD_MAX];
	char scheme[OBI_GO_SCHEME_MAX];
	char host[OBI_GO_HOST_MAX];
	char path[OBI_GO_PATH_MAX];
};

/* HTTP/2 (struct obi_h2). A connection that starts with the client preface is followed frame
 * by frame, each side's bytes as it moves them: a record carries, for each frame that began or
 * went on in one call, a chunk: its captured payload length (__u16), its 9-byte frame header,
 * then that many payload bytes. Header blocks (HEADERS, CONTINUATION, PUSH_PROMISE) and
 * RST_STREAM keep their payload, up to OBI_H2_PAYLOAD_MAX; DATA frames their first
 * OBI_H2_DATA_PREFIX bytes (the padding's length; a gRPC message's prefix: compressed flag and
 * length); other frames nothing. A payload that goes on in a later call comes as a chunk whose header
 * has type OBI_H2_MORE (and its length field the bytes that chunk holds). */
#define OBI_H2_DATA_MAX 4096    /* chunk bytes of one record */
#define OBI_H2_PAYLOAD_MAX 2048 /* payload bytes kept of one frame */
#define OBI_H2_DATA_PREFIX 5    /* payload bytes kept of a DATA frame */
#define OBI_H2_MORE 0xff
#define OBI_H2_TO_SERVER 0       /* `direction`: what the client sent */
#define OBI_H2_TO_CLIENT 1
#define OBI_H2_LOST 0x01         /* frames before these were not captured (a full record, a walk
				  * given up) */
#define OBI_H2_START 0x02        /* the connection's first frames (after the preface) */
#define OBI_H2_CLOSED 0x04       /* the connection closed: no chunks */
#define OBI_H2_TLS 0x08          /* TLS plaintext */
#define OBI_H2_PARENT 0x10       /* a client's: the chunks are followed by the trace id (16) and
				  * span id (8) of the request its thread serves, the parent of the
				  * streams these frames open */
#define OBI_H2_PARENT_SIZE 24

struct obi_h2 {
	__u8 kind;      /* OBI_RECORD_H2 */
	__u8 direction; /* OBI_H2_TO_* */
	__u8 role;      /* OBI_ROLE_* of the traced process */
	__u8 flags;     /* OBI_H2_* */
	__u32 pid;
	__u64 conn;     /* the connection (its struct sock *): one id for all its records */
	__u64 ts_ns;    /* CLOCK_MONOTONIC: the call moved these bytes */
	__u16 family;
	__u16 local_port;
	__u16 peer_port;
	__u16 len;      /* chunk bytes that follow */
	__u8 local_addr[16];
	__u8 peer_addr[16];
};

/* Span ids the kernel set (after the captured bytes of a record with OBI_FLAG_IDS). A served
 * request's trace_id is its traceparent's, when it came with one (parent_span_id is then
 * that traceparent's span), else random; a call's are its parent's trace and a new span. */
struct obi_ids {
	__u8 trace_id[16];
	__u8 span_id[8];
	__u8 parent_span_id[8];
};

/* Key of the file descriptor map. */
struct obi_conn_key {
	__u32 pid;
	__u32 fd;
};

/* What user space tells the sweep program before each run (the `sweep_ctl` array). */
struct obi_sweep_ctl {
	__u64 idle_ns;            /* emit unframed responses quiet for this long (0: never) */
	__u64 request_timeout_ns; /* emit HTTP requests unanswered for this long (0: never) */
	__u64 flush;              /* 1: emit every exchange with a response under way */
	__u32 cursor;             /* first slot of the next run (kernels without bpf_loop) */
	__u32 pad;
};

#endif /* OBI_CAPTURE_H */
