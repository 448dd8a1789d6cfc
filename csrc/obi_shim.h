/* Thin C shim over libbpf for obi's CFFI module.
 *
 * Everything here exists because doing it per event from Python would cost a
 * call per event (ring draining), or because libbpf's API is variadic or
 * awkward through CFFI (the print callback, BTF datasec walking, test runs).
 * Declarations are plain C so the CFFI build can cdef this header as is.
 */

/* A contiguous batch of ring-buffer records, each stored as a native-endian
 * uint32_t length followed by the record's bytes. */
struct obi_batch {
	uint8_t *buf;
	size_t cap;           /* bytes in buf */
	size_t max_record;    /* largest record the ring can hold */
	size_t used;          /* bytes filled by the last drain */
	size_t count;         /* records in buf after the last drain */
	int full;             /* the last drain stopped because buf could not take another record */
	uint64_t oversized;   /* records larger than max_record, dropped (counted) */
};

/* Routes libbpf's messages to the Python callback obi_libbpf_log. */
void obi_install_print(void);

/* Writes a `const volatile` global of the object's .rodata before load. */
int obi_set_rodata(struct bpf_object *obj, const char *name, const void *value, size_t size);

struct ring_buffer *obi_ring_new(int map_fd, struct obi_batch *batch);
/* Copies pending records into batch->buf; returns records copied or -errno. */
int obi_ring_drain(struct ring_buffer *rb, struct obi_batch *batch);

/* Runs a raw_tp program once on this CPU (BPF_PROG_TEST_RUN); returns its
 * return value or -errno. */
int obi_run_program(int prog_fd);

/* Pushes 0..n-1 into a queue map; returns how many went in, or -errno. */
int obi_fill_queue(int map_fd, uint32_t n);

/* Sums a per-CPU array of u64 counters into out[0..n). */
int obi_read_percpu_counters(int map_fd, uint64_t *out, uint32_t n);

/* Sets the expected attach type of a program before load (BPF_TRACE_UPROBE_MULTI). */
int obi_set_attach_type(struct bpf_program *prog, uint32_t attach_type);

/* Attaches a uprobe program at cnt offsets of the file at path with one uprobe_multi
 * link (Linux 6.6+; needs only CAP_BPF and CAP_PERFMON), each with its cookie (cookies
 * may be NULL). Returns the link fd or -errno. */
int obi_uprobe_multi(int prog_fd, const char *path, const uint64_t *offsets, const uint64_t *cookies,
		     uint32_t cnt, int retprobe);

/* Attaches a uprobe program at one offset through a uprobe perf event (pmu_type from
 * /sys/bus/event_source/devices/uprobe/type; retprobe_bit from its format). Returns the
 * link fd (which holds the perf event) or -errno. */
int obi_uprobe_perf(int prog_fd, uint32_t pmu_type, const char *path, uint64_t offset, int retprobe_bit,
		    uint64_t cookie);

/* The kernel's id, type, key size and max_entries of a map (bpf_obj_get_info_by_fd); 0 or
 * -errno. */
int obi_map_info(int map_fd, uint32_t *id, uint32_t *type, uint32_t *key_size, uint32_t *max_entries);

/* Counts a map's keys by walking them (a hash map's entries), stopping after max; -errno on
 * error. Entries added or deleted meanwhile may or may not be counted. */
long obi_count_keys(int map_fd, uint32_t key_size, uint32_t max);

/* Whether an fentry program loads and attaches on the kernel function func here (the
 * kernel's BPF trampolines and this process's privileges): 0 or -errno. */
int obi_probe_fentry(const char *func);

/* Whether the verifier takes BPF atomic or/and/cmpxchg (Linux 5.12+): 0 or -errno. */
int obi_probe_atomics(void);
