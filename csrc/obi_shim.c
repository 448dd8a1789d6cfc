/* See obi_shim.h. Compiled as part of the CFFI module, which defines the
 * Python callback obi_libbpf_log declared before this file is included. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <linux/perf_event.h>
#include <linux/bpf.h>
#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>

#include "obi_shim.h"

/* The kernel header's __u8... types for bpf/capture.h. */
#include <linux/types.h>
#include "capture.h"

static int obi_print(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	char small[1024], *msg = small;
	va_list again;
	int n;

	/* most messages are short; a verifier log is not, and its end says why a load failed */
	va_copy(again, ap);
	n = vsnprintf(small, sizeof(small), fmt, ap);
	if (n >= (int)sizeof(small)) {
		msg = malloc((size_t)n + 1);
		if (msg)
			vsnprintf(msg, (size_t)n + 1, fmt, again);
		else
			msg = small;
	}
	va_end(again);
	if (n > 0 && msg == small && n >= (int)sizeof(small))
		n = sizeof(small) - 1;
	if (n > 0 && msg[n - 1] == '\n')
		msg[n - 1] = '\0';
	obi_libbpf_log((int)level, msg);
	if (msg != small)
		free(msg);
	return 0;
}

void obi_install_print(void)
{
	libbpf_set_print(obi_print);
}

int obi_set_rodata(struct bpf_object *obj, const char *name, const void *value, size_t size)
{
	struct bpf_map *map = bpf_object__find_map_by_name(obj, ".rodata");
	const struct btf *btf = bpf_object__btf(obj);
	const struct btf_var_secinfo *vsi;
	const struct btf_type *sec;
	size_t data_size = 0;
	void *data;
	int id, i;

	if (!map || !btf)
		return -ENOENT;
	data = (void *)bpf_map__initial_value(map, &data_size);
	id = btf__find_by_name_kind(btf, ".rodata", BTF_KIND_DATASEC);
	if (!data || id < 0)
		return -ENOENT;
	sec = btf__type_by_id(btf, id);
	vsi = btf_var_secinfos(sec);
	for (i = 0; i < btf_vlen(sec); i++, vsi++) {
		const struct btf_type *var = btf__type_by_id(btf, vsi->type);

		if (strcmp(btf__name_by_offset(btf, var->name_off), name) != 0)
			continue;
		if (vsi->size != size || vsi->offset + size > data_size)
			return -EINVAL;
		memcpy((char *)data + vsi->offset, value, size);
		return 0;
	}
	return -ENOENT;
}

static int obi_batch_add(void *ctx, void *data, size_t size)
{
	struct obi_batch *b = ctx;
	uint32_t len = (uint32_t)size;

	if (size > b->max_record) {
		b->oversized++;
		return 0;
	}
	memcpy(b->buf + b->used, &len, sizeof(len));
	memcpy(b->buf + b->used + sizeof(len), data, size);
	b->used += sizeof(len) + size;
	b->count++;
	if (b->cap - b->used < sizeof(len) + b->max_record) {
		/* libbpf has consumed this record already: stop before the next. */
		b->full = 1;
		return -1;
	}
	return 0;
}

struct ring_buffer *obi_ring_new(int map_fd, struct obi_batch *batch)
{
	return ring_buffer__new(map_fd, obi_batch_add, batch, NULL);
}

int obi_ring_drain(struct ring_buffer *rb, struct obi_batch *batch)
{
	int err;

	batch->used = 0;
	batch->count = 0;
	batch->full = 0;
	if (batch->cap < sizeof(uint32_t) + batch->max_record)
		return -EINVAL;
	err = ring_buffer__consume(rb);
	if (err < 0 && !batch->full)
		return err;
	return (int)batch->count;
}

int obi_run_program(int prog_fd)
{
	uint64_t args[1] = {0};
	LIBBPF_OPTS(bpf_test_run_opts, opts, .ctx_in = args, .ctx_size_in = sizeof(args));
	int err = bpf_prog_test_run_opts(prog_fd, &opts);

	if (err)
		return -errno;
	return (int)opts.retval;
}

int obi_fill_queue(int map_fd, uint32_t n)
{
	uint32_t i;

	for (i = 0; i < n; i++) {
		if (bpf_map_update_elem(map_fd, NULL, &i, BPF_ANY))
			return i ? (int)i : -errno;
	}
	return (int)n;
}

int obi_read_percpu_counters(int map_fd, uint64_t *out, uint32_t n)
{
	int ncpu = libbpf_num_possible_cpus();
	uint64_t *per_cpu;
	uint32_t k;
	int c;

	if (ncpu <= 0)
		return ncpu;
	per_cpu = calloc((size_t)ncpu, sizeof(*per_cpu));
	if (!per_cpu)
		return -ENOMEM;
	for (k = 0; k < n; k++) {
		out[k] = 0;
		if (bpf_map_lookup_elem(map_fd, &k, per_cpu))
			continue;
		for (c = 0; c < ncpu; c++)
			out[k] += per_cpu[c];
	}
	free(per_cpu);
	return 0;
}

int obi_set_attach_type(struct bpf_program *prog, uint32_t attach_type)
{
	return bpf_program__set_expected_attach_type(prog, (enum bpf_attach_type)attach_type);
}

/* BPF_LINK_CREATE for uprobe_multi, laid out as Linux 6.6's union bpf_attr (the
 * libbpf and kernel headers of the build machine may predate it). */
struct obi_uprobe_multi_attr {
	uint32_t prog_fd;
	uint32_t target_fd;
	uint32_t attach_type;
	uint32_t flags;
	uint64_t path;
	uint64_t offsets;
	uint64_t ref_ctr_offsets;
	uint64_t cookies;
	uint32_t cnt;
	uint32_t multi_flags;
	uint32_t pid;
	uint8_t rest[84]; /* zero up to the size the kernel is given */
};

#define OBI_BPF_TRACE_UPROBE_MULTI 48
#define OBI_BPF_F_UPROBE_MULTI_RETURN 1
#define OBI_BPF_PERF_EVENT 41

int obi_uprobe_multi(int prog_fd, const char *path, const uint64_t *offsets, const uint64_t *cookies,
		     uint32_t cnt, int retprobe)
{
	struct obi_uprobe_multi_attr attr;
	long fd;

	memset(&attr, 0, sizeof(attr));
	attr.prog_fd = (uint32_t)prog_fd;
	attr.attach_type = OBI_BPF_TRACE_UPROBE_MULTI;
	attr.path = (uint64_t)(uintptr_t)path;
	attr.offsets = (uint64_t)(uintptr_t)offsets;
	attr.cookies = (uint64_t)(uintptr_t)cookies;
	attr.cnt = cnt;
	attr.multi_flags = retprobe ? OBI_BPF_F_UPROBE_MULTI_RETURN : 0;
	fd = syscall(__NR_bpf, BPF_LINK_CREATE, &attr, sizeof(attr));
	return fd < 0 ? -errno : (int)fd;
}

int obi_uprobe_perf(int prog_fd, uint32_t pmu_type, const char *path, uint64_t offset, int retprobe_bit,
		    uint64_t cookie)
{
	struct perf_event_attr attr;
	union bpf_attr link;
	long pfd, fd;
	int err;

	memset(&attr, 0, sizeof(attr));
	attr.size = sizeof(attr);
	attr.type = pmu_type;
	if (retprobe_bit >= 0)
		attr.config |= 1ULL << retprobe_bit;
	attr.config1 = (uint64_t)(uintptr_t)path; /* uprobe_path */
	attr.config2 = offset;                     /* probe_offset */
	/* every process, as libbpf does: the programs filter by pid themselves */
	pfd = syscall(__NR_perf_event_open, &attr, -1, 0, -1, PERF_FLAG_FD_CLOEXEC);
	if (pfd < 0)
		return -errno;
	memset(&link, 0, sizeof(link));
	link.link_create.prog_fd = (uint32_t)prog_fd;
	link.link_create.target_fd = (uint32_t)pfd;
	link.link_create.attach_type = OBI_BPF_PERF_EVENT;
	link.link_create.perf_event.bpf_cookie = cookie;
	fd = syscall(__NR_bpf, BPF_LINK_CREATE, &link, sizeof(link));
	err = errno;
	close((int)pfd); /* the link holds the event */
	return fd < 0 ? -err : (int)fd;
}

int obi_map_info(int map_fd, uint32_t *id, uint32_t *type, uint32_t *key_size, uint32_t *max_entries)
{
	struct bpf_map_info info;
	uint32_t len = sizeof(info);

	memset(&info, 0, sizeof(info));
	if (bpf_obj_get_info_by_fd(map_fd, &info, &len))
		return -errno;
	*id = info.id;
	*type = info.type;
	*key_size = info.key_size;
	*max_entries = info.max_entries;
	return 0;
}

long obi_count_keys(int map_fd, uint32_t key_size, uint32_t max)
{
	unsigned char *keys;
	unsigned char *prev, *next, *swap;
	long count = 0;
	int err = 0;

	if (!key_size)
		return -EINVAL;
	keys = calloc(2, key_size);
	if (!keys)
		return -ENOMEM;
	prev = NULL;
	next = keys;
	while ((uint32_t)count < max) {
		if (bpf_map_get_next_key(map_fd, prev, next)) {
			if (errno != ENOENT)
				err = -errno;
			break;
		}
		count++;
		swap = prev ? prev : keys + key_size;
		prev = next;
		next = swap;
	}
	free(keys);
	return err ? err : count;
}

/* An fentry program that does nothing, loaded for func and attached, then released. */
int obi_probe_fentry(const char *func)
{
	struct bpf_insn insns[2] = {
		{.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .imm = 0},
		{.code = BPF_JMP | BPF_EXIT},
	};
	LIBBPF_OPTS(bpf_prog_load_opts, opts, .expected_attach_type = BPF_TRACE_FENTRY);
	struct btf *vmlinux = btf__load_vmlinux_btf();
	int id, prog, link;

	if (!vmlinux)
		return -errno;
	id = btf__find_by_name_kind(vmlinux, func, BTF_KIND_FUNC);
	btf__free(vmlinux);
	if (id < 0)
		return id;
	opts.attach_btf_id = id;
	prog = bpf_prog_load(BPF_PROG_TYPE_TRACING, "obi_probe", "GPL", insns, 2, &opts);
	if (prog < 0)
		return prog;
	link = bpf_raw_tracepoint_open(NULL, prog);
	close(prog);
	if (link < 0)
		return link;
	close(link);
	return 0;
}

/* Whether the verifier takes the atomic operations beyond add (or, and, cmpxchg: Linux
 * 5.12+), which the capture's slot bitmap and slot ownership use: 0 or -errno. */
int obi_probe_atomics(void)
{
	struct bpf_insn insns[] = {
		{.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_1, .imm = 0},
		{.code = BPF_STX | BPF_MEM | BPF_DW, .dst_reg = BPF_REG_10, .src_reg = BPF_REG_1, .off = -8},
		{.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_2, .imm = 1},
		{.code = BPF_STX | BPF_ATOMIC | BPF_DW, .dst_reg = BPF_REG_10, .src_reg = BPF_REG_2, .off = -8,
		 .imm = BPF_OR},
		{.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .imm = 0},
		{.code = BPF_JMP | BPF_EXIT},
	};
	int prog = bpf_prog_load(BPF_PROG_TYPE_SOCKET_FILTER, "obi_atomics", "GPL", insns,
				 sizeof(insns) / sizeof(insns[0]), NULL);

	if (prog < 0)
		return prog;
	close(prog);
	return 0;
}
