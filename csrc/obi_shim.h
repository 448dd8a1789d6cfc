/* Thin C shim over libbpf for obi's CFFI module.
 *
 * Everything here exists because doing it per event from Python would cost a
 * call per event (ring draining), or because libbpf's API is variadic or
 * awkward through CFFI (the print callback, BTF datasec walking).
 * Declarations are plain C so the CFFI build can cdef this header as is.
 */

/* A contiguous batch of ring-buffer records of one fixed size. */
struct obi_batch {
	uint8_t *buf;
	size_t cap;           /* bytes in buf */
	size_t record_size;   /* size of every record */
	size_t used;          /* bytes filled by the last drain */
	size_t count;         /* records in buf after the last drain */
	int full;             /* the last drain stopped because buf was full */
	uint64_t bad_size;    /* records of an unexpected size, dropped (counted) */
};

/* Routes libbpf's messages to the Python callback obi_libbpf_log. */
void obi_install_print(void);

/* Writes a `const volatile` global of the object's .rodata before load. */
int obi_set_rodata(struct bpf_object *obj, const char *name, const void *value, size_t size);

struct ring_buffer *obi_ring_new(int map_fd, struct obi_batch *batch);
/* Copies pending records into batch->buf; returns records copied or -errno. */
int obi_ring_drain(struct ring_buffer *rb, struct obi_batch *batch);

/* Moves in-flight HTTP requests whose response has been idle for idle_ns
 * out of the connection map into out (max_events events); returns how many. */
int obi_http_sweep_idle(int conns_fd, uint64_t now_ns, uint64_t idle_ns,
			uint8_t *out, size_t max_events);
/* Forgets every in-flight connection of pid; returns how many. */
int obi_http_forget_pid(int conns_fd, uint32_t pid);

/* Sums a per-CPU array of u64 counters into out[0..n). */
int obi_read_percpu_counters(int map_fd, uint64_t *out, uint32_t n);
