/* Syscall numbers that the raw_tracepoint/sys_enter dispatcher needs.
 *
 * Why here and not <asm/unistd.h>: the system header is for the host's
 * architecture and cannot be mixed with vmlinux.h; these numbers are the
 * kernel ABI and never change for an architecture.
 */
#ifndef OBI_SYSCALL_NR_H
#define OBI_SYSCALL_NR_H

#if defined(__TARGET_ARCH_x86)
#define OBI_NR_read 0
#define OBI_NR_write 1
#define OBI_NR_close 3
#define OBI_NR_readv 19
#define OBI_NR_writev 20
#define OBI_NR_sendfile 40
#define OBI_NR_connect 42
#define OBI_NR_accept 43
#define OBI_NR_sendto 44
#define OBI_NR_recvfrom 45
#define OBI_NR_sendmsg 46
#define OBI_NR_recvmsg 47
#define OBI_NR_accept4 288
#define OBI_NR_shutdown 48
#define OBI_NR_close_range 436
#define OBI_NR_listen 50
#elif defined(__TARGET_ARCH_arm64)
#define OBI_NR_close 57
#define OBI_NR_read 63
#define OBI_NR_write 64
#define OBI_NR_readv 65
#define OBI_NR_writev 66
#define OBI_NR_sendfile 71
#define OBI_NR_accept 202
#define OBI_NR_connect 203
#define OBI_NR_sendto 206
#define OBI_NR_recvfrom 207
#define OBI_NR_sendmsg 211
#define OBI_NR_recvmsg 212
#define OBI_NR_accept4 242
#define OBI_NR_shutdown 210
#define OBI_NR_close_range 436
#define OBI_NR_listen 201
#else
#error "obi: unsupported target architecture"
#endif

#endif /* OBI_SYSCALL_NR_H */
