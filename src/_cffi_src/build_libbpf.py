"""CFFI build script (build time only, not shipped): obi.ebpf._libbpf_cffi.

The module wraps the libbpf calls obi needs and csrc/obi_shim.c. Event
structs come from bpf/*.h, the same headers the BPF programs compile with,
so no layout is restated here; CFFI checks each struct's layout against the
C compiler's when the module is built.
"""

from __future__ import annotations

import re
from pathlib import Path

from cffi import FFI

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"
BPF = ROOT / "bpf"

LIBBPF_CDEF = """
typedef uint8_t __u8;
typedef uint16_t __u16;
typedef uint32_t __u32;
typedef uint64_t __u64;
typedef int32_t __s32;
typedef int64_t __s64;

struct bpf_object;
struct bpf_program;
struct bpf_map;
struct bpf_link;
struct ring_buffer;
struct bpf_object_open_opts;

enum bpf_prog_type {
    BPF_PROG_TYPE_SOCKET_FILTER,
    BPF_PROG_TYPE_KPROBE,
    BPF_PROG_TYPE_SCHED_CLS,
    BPF_PROG_TYPE_TRACEPOINT,
    BPF_PROG_TYPE_XDP,
    BPF_PROG_TYPE_PERF_EVENT,
    BPF_PROG_TYPE_CGROUP_SKB,
    BPF_PROG_TYPE_SOCK_OPS,
    BPF_PROG_TYPE_SK_MSG,
    BPF_PROG_TYPE_RAW_TRACEPOINT,
    BPF_PROG_TYPE_TRACING,
    BPF_PROG_TYPE_SYSCALL,
    ...
};
enum bpf_func_id {
    BPF_FUNC_loop,
    BPF_FUNC_get_attach_cookie,
    ...
};
enum bpf_attach_type {
    BPF_SK_MSG_VERDICT,
    ...
};
enum bpf_map_type {
    BPF_MAP_TYPE_HASH,
    BPF_MAP_TYPE_RINGBUF,
    ...
};

struct bpf_object *bpf_object__open_file(const char *path, const struct bpf_object_open_opts *opts);
int bpf_object__load(struct bpf_object *obj);
void bpf_object__close(struct bpf_object *obj);
struct bpf_program *bpf_object__next_program(const struct bpf_object *obj, struct bpf_program *prog);
struct bpf_map *bpf_object__find_map_by_name(const struct bpf_object *obj, const char *name);

const char *bpf_program__name(const struct bpf_program *prog);
const char *bpf_program__section_name(const struct bpf_program *prog);
int bpf_program__set_autoload(struct bpf_program *prog, bool autoload);
bool bpf_program__autoload(const struct bpf_program *prog);
int bpf_program__fd(const struct bpf_program *prog);
struct bpf_link *bpf_program__attach(const struct bpf_program *prog);
struct bpf_link *bpf_program__attach_tracepoint(const struct bpf_program *prog, const char *tp_category,
                                                const char *tp_name);

struct bpf_link *bpf_program__attach_cgroup(const struct bpf_program *prog, int cgroup_fd);
int bpf_prog_attach(int prog_fd, int attachable_fd, enum bpf_attach_type type, unsigned int flags);

int bpf_link__fd(const struct bpf_link *link);
int bpf_link__destroy(struct bpf_link *link);

int bpf_map__fd(const struct bpf_map *map);
struct bpf_map *bpf_object__next_map(const struct bpf_object *obj, const struct bpf_map *map);
const char *bpf_map__name(const struct bpf_map *map);
int bpf_map__reuse_fd(struct bpf_map *map, int fd);
int bpf_map__set_max_entries(struct bpf_map *map, uint32_t max_entries);
int bpf_map__set_autocreate(struct bpf_map *map, bool autocreate);
uint32_t bpf_map__max_entries(const struct bpf_map *map);
uint32_t bpf_map__value_size(const struct bpf_map *map);

int bpf_map_update_elem(int fd, const void *key, const void *value, uint64_t flags);
int bpf_map_lookup_elem(int fd, const void *key, void *value);
int bpf_map_delete_elem(int fd, const void *key);
int bpf_map_get_next_key(int fd, const void *key, void *next_key);

void ring_buffer__free(struct ring_buffer *rb);
int ring_buffer__epoll_fd(const struct ring_buffer *rb);

int libbpf_num_possible_cpus(void);
int libbpf_strerror(int err, char *buf, size_t size);
int libbpf_probe_bpf_prog_type(enum bpf_prog_type prog_type, const void *opts);
int libbpf_probe_bpf_map_type(enum bpf_map_type map_type, const void *opts);
int libbpf_probe_bpf_helper(enum bpf_prog_type prog_type, int helper_id, const void *opts);

extern "Python" void obi_libbpf_log(int level, const char *msg);
"""


def _header_for_cdef(path: Path) -> str:
    """A bpf/*.h header as CFFI's cdef accepts it: no include guards."""
    lines = []
    for line in path.read_text().splitlines():
        if re.match(r"\s*#\s*(ifndef|endif|include)\b", line):
            continue
        if re.match(r"\s*#\s*define\s+\w+\s*$", line):  # guard macro without a value
            continue
        lines.append(line)
    return "\n".join(lines)


def _shim_cdef() -> str:
    text = (CSRC / "obi_shim.h").read_text()
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


ffibuilder = FFI()
ffibuilder.cdef(LIBBPF_CDEF + _header_for_cdef(BPF / "capture.h") + _shim_cdef())

ffibuilder.set_source(
    "obi.ebpf._libbpf_cffi",
    """
#include <stdbool.h>
#include <stdint.h>
#include <bpf/libbpf.h>
#include <bpf/bpf.h>
static void obi_libbpf_log(int level, const char *msg);
#include "obi_shim.c"
""",
    include_dirs=[str(CSRC), str(BPF)],
    # Debian's libbpf.a is not position independent, so libbpf is linked
    # shared: the runtime needs the libbpf1 package (libelf and zlib with it).
    libraries=["bpf", "elf", "z"],
    extra_compile_args=["-O2", "-Wall"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
