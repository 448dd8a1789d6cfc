/* Event structs and constants shared by bpf/http.bpf.c and user space.
 *
 * User space never restates this layout: the CFFI build reads this header,
 * and a test checks it against the BTF of the compiled object. Keep it to
 * fixed-width types, explicit padding, the event kind first, and plain
 * `#define NAME number` constants (the form CFFI's cdef understands).
 */
#ifndef OBI_HTTP_H
#define OBI_HTTP_H

#define OBI_EVENT_KIND_HTTP 1

/* Largest request / response prefix an event can carry. The bytes actually
 * captured are set at load time (req_capture_len / resp_capture_len). */
#define OBI_HTTP_REQ_BUF_MAX 1024
#define OBI_HTTP_RESP_BUF_MAX 256

/* Connection states of an in-flight request (the `state` field). */
#define OBI_HTTP_STATE_IDLE 0
#define OBI_HTTP_STATE_READING 1
#define OBI_HTTP_STATE_RESPONDING 2
#define OBI_HTTP_STATE_CLIENT 3 /* an outgoing connection: not traced as a server */

/* Slots of the `counters` per-CPU array. */
#define OBI_COUNTER_EVENTS_LOST 0
#define OBI_COUNTER_EVENTS_SENT 1
#define OBI_COUNTER_CONN_TABLE_FULL 2
#define OBI_COUNTER_CALL_TABLE_FULL 3
#define OBI_COUNTER_MAX 8

/* One completed HTTP/1.x request as the server saw it. Also the value of the
 * in-flight connection map, where `state` tracks the request's progress. */
struct obi_http_event {
	__u8 kind;           /* OBI_EVENT_KIND_HTTP */
	__u8 state;          /* OBI_HTTP_STATE_*; RESPONDING when emitted */
	__u16 family;        /* AF_INET or AF_INET6 */
	__u32 pid;           /* process id in obi's pid namespace */
	__u32 tid;           /* thread that wrote the response (host tid) */
	__u16 local_port;    /* host byte order */
	__u16 peer_port;     /* host byte order */
	__u64 start_ns;      /* CLOCK_MONOTONIC: first request bytes returned by read */
	__u64 end_ns;        /* CLOCK_MONOTONIC: last response write returned */
	__u8 local_addr[16]; /* IPv4 in the first 4 bytes, or IPv6 */
	__u8 peer_addr[16];
	__u32 req_len;       /* bytes read for the request (headers and body) */
	__u32 resp_len;      /* bytes written for the response */
	__u16 req_captured;  /* valid bytes in req_buf */
	__u16 resp_captured; /* valid bytes in resp_buf */
	__u32 fd;            /* the connection's file descriptor in pid */
	__u8 req_buf[OBI_HTTP_REQ_BUF_MAX];
	__u8 resp_buf[OBI_HTTP_RESP_BUF_MAX];
};

/* Key of the in-flight connection map. */
struct obi_conn_key {
	__u32 pid;
	__u32 fd;
};

#endif /* OBI_HTTP_H */
