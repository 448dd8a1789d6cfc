/* See obi_shim.h. Compiled as part of the CFFI module, which defines the
 * Python callback obi_libbpf_log declared before this file is included. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/bpf.h>
#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>

#include "obi_shim.h"

/* The kernel header's __u8... types for bpf/http.h. */
#include <linux/types.h>
#include "http.h"

static int obi_print(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	char msg[1024];
	int n = vsnprintf(msg, sizeof(msg), fmt, ap);

	if (n > 0 && msg[(size_t)n < sizeof(msg) ? (size_t)n - 1 : sizeof(msg) - 2] == '\n')
		msg[(size_t)n < sizeof(msg) ? (size_t)n - 1 : sizeof(msg) - 2] = '\0';
	obi_libbpf_log((int)level, msg);
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

	if (size != b->record_size) {
		b->bad_size++;
		return 0;
	}
	memcpy(b->buf + b->used, data, size);
	b->used += size;
	b->count++;
	if (b->cap - b->used < b->record_size) {
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
	if (batch->cap < batch->record_size)
		return -EINVAL;
	err = ring_buffer__consume(rb);
	if (err < 0 && !batch->full)
		return err;
	return (int)batch->count;
}

int obi_http_sweep_idle(int conns_fd, uint64_t now_ns, uint64_t idle_ns,
			uint8_t *out, size_t max_events)
{
	struct obi_conn_key key, next, *prev = NULL;
	struct obi_conn_key *stale;
	size_t n_stale = 0, cap = 256, n_out = 0, i;
	uint8_t *value;
	int value_size;
	struct bpf_map_info info = {};
	__u32 info_len = sizeof(info);

	if (bpf_obj_get_info_by_fd(conns_fd, &info, &info_len))
		return -errno;
	value_size = (int)info.value_size;
	if ((size_t)value_size < sizeof(struct obi_http_event))
		return -EINVAL;
	value = malloc((size_t)value_size);
	stale = malloc(cap * sizeof(*stale));
	if (!value || !stale) {
		free(value);
		free(stale);
		return -ENOMEM;
	}
	while (bpf_map_get_next_key(conns_fd, prev, &next) == 0) {
		key = next;
		prev = &key;
		if (bpf_map_lookup_elem(conns_fd, &key, value))
			continue;
		struct obi_http_event *ev = (struct obi_http_event *)value;
		if (ev->state != OBI_HTTP_STATE_RESPONDING || now_ns < ev->end_ns + idle_ns)
			continue;
		if (n_stale == cap) {
			struct obi_conn_key *grown = realloc(stale, 2 * cap * sizeof(*stale));
			if (!grown)
				break;
			stale = grown;
			cap *= 2;
		}
		stale[n_stale++] = key;
	}
	for (i = 0; i < n_stale && n_out < max_events; i++) {
		struct obi_http_event *ev = (struct obi_http_event *)value;

		if (bpf_map_lookup_elem(conns_fd, &stale[i], value))
			continue;
		if (ev->state != OBI_HTTP_STATE_RESPONDING || now_ns < ev->end_ns + idle_ns)
			continue;
		/* Reset rather than delete: the connection stays known. Only the
		 * state byte changes, so a concurrent kernel update loses nothing
		 * but this response, which it would end anyway. */
		memcpy(out + n_out * sizeof(*ev), ev, sizeof(*ev));
		n_out++;
		ev->state = OBI_HTTP_STATE_IDLE;
		bpf_map_update_elem(conns_fd, &stale[i], value, BPF_EXIST);
	}
	free(value);
	free(stale);
	return (int)n_out;
}

int obi_http_forget_pid(int conns_fd, uint32_t pid)
{
	struct obi_conn_key key, next, *prev = NULL;
	int n = 0;

	while (bpf_map_get_next_key(conns_fd, prev, &next) == 0) {
		key = next;
		prev = &key;
		if (key.pid != pid)
			continue;
		if (bpf_map_delete_elem(conns_fd, &key) == 0)
			n++;
		/* The deleted key cannot lead the walk: start over. */
		prev = NULL;
	}
	return n;
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
