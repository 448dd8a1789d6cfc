/* HTTP/1.x framing for the pairing in capture.bpf.c: where a response ends.
 *
 * This is all the kernel knows of HTTP: a request line's method (to know an
 * exchange is HTTP), a status line's code (1xx interim responses do not end
 * an exchange; 204 and 304 have no body), and from the header block its
 * length, Content-Length and whether the body is chunked. Everything else is
 * parsed in user space from the captured bytes.
 *
 * The header scan reads the user buffer in pieces into a per-CPU scratch and
 * looks for line feeds a word at a time; it runs under bpf_loop (5.17+), so
 * it is verified once whatever the header length. Kernels without bpf_loop
 * get no framing: their HTTP exchanges end on the next request, on close, or
 * after the idle timeout.
 */
#ifndef OBI_HTTP1_H
#define OBI_HTTP1_H

#include "bits.h"

#define HTTP1_SCAN_MAX 4096 /* longest header block scanned (a power of two) */
#define HTTP1_SCAN_PIECE 512
#define HTTP1_SCAN_BUF (HTTP1_SCAN_MAX + HTTP1_SCAN_PIECE + 64)
#define HTTP1_SCAN_STEPS (2 * HTTP1_SCAN_MAX / 8 + 64)
#define HTTP1_WORDS_PER_STEP 8

/* Eight lower-case ASCII characters as the little-endian word they load as. */
#define W8(a, b, c, d, e, f, g, h)                                                          \
	((__u64)(a) | (__u64)(b) << 8 | (__u64)(c) << 16 | (__u64)(d) << 24 |                \
	 (__u64)(e) << 32 | (__u64)(f) << 40 | (__u64)(g) << 48 | (__u64)(h) << 56)
#define LOWER8 0x2020202020202020ULL
#define ONES8 0x0101010101010101ULL
#define HIGHS8 0x8080808080808080ULL
#define LFS8 0x0a0a0a0a0a0a0a0aULL

struct http1_scan {
	__u64 src;            /* the user buffer */
	__u32 len;            /* bytes of it to scan (at most HTTP1_SCAN_MAX) */
	__u32 avail;          /* bytes of it copied into buf */
	__u32 pos;            /* offset of the next word to load */
	__u32 word_off;       /* offset of the word nl_mask belongs to */
	__u64 nl_mask;        /* line feeds of that word not looked at yet */
	__u32 te_line;        /* the line after a Transfer-Encoding header starts here (0: none) */
	/* results */
	__u32 header_end;     /* offset just past the blank line; 0 when not found */
	__s64 content_length; /* -1 when absent or invalid */
	__u8 chunked;
	__u8 pad[7];
};

/* The per-CPU scratch the scan copies the user buffer into (HTTP1_SCAN_BUF bytes). */
static __always_inline __u8 *http1_scratch(void);

/* Copies more of the user buffer so that [0, want) is in buf (as far as len allows). */
static __always_inline void http1_fill(struct http1_scan *s, __u8 *buf, __u32 want)
{
	__u32 off = s->avail;
	__u32 n;

	if (want > s->len)
		want = s->len;
	if (off >= want)
		return;
	n = s->len - off;
	if (n > HTTP1_SCAN_PIECE)
		n = HTTP1_SCAN_PIECE;
	if (off >= HTTP1_SCAN_MAX)
		return;
	clamp_umax(off, HTTP1_SCAN_MAX - 1);
	clamp_umax(n, HTTP1_SCAN_PIECE);
	if (bpf_probe_read_user(buf + off, n, (void *)(s->src + off)))
		return;
	s->avail = off + n;
}

/* The 8 bytes at off (bytes past what was copied are stale; callers bound by len). */
static __always_inline __u64 http1_word(__u8 *buf, __u32 off)
{
	barrier_var(off);
	off &= HTTP1_SCAN_MAX - 1;
	return *(__u64 *)(buf + off);
}

static __always_inline __u8 http1_byte(__u8 *buf, __u32 off)
{
	barrier_var(off);
	off &= HTTP1_SCAN_MAX - 1;
	return buf[off];
}

/* Index (0..7) of the byte whose high bit is the lowest set bit of mask. */
static __always_inline __u32 http1_lowest_byte(__u64 mask)
{
	return ctz64(mask) / 8;
}

/* A Content-Length value starting at `at` (just past the colon) into s->content_length. A
 * global function, checked once: inlined, its digit loop multiplied the paths of
 * http1_scan_step past the verifier's million instructions on Linux 7.2 (6.1 and 6.18
 * took it). */
__noinline int http1_content_length(struct http1_scan *s, __u32 at)
{
	__u8 *buf = http1_scratch();
	__s64 value = 0;
	int digits = 0;

	if (!s || !buf)
		return 0;

	for (int i = 0; i < 3; i++) {
		__u8 c = http1_byte(buf, at);
		if (c != ' ' && c != '\t')
			break;
		at++;
	}
	for (int i = 0; i < 19; i++) {
		__u8 c = http1_byte(buf, at + i);
		if (c < '0' || c > '9')
			break;
		value = value * 10 + (c - '0');
		digits++;
	}
	if (digits && http1_byte(buf, at + digits) == '\r')
		s->content_length = value;
	return 0;
}

/* Looks at the header line starting at `line`: the blank line, or a header we need. */
static __always_inline long http1_line(struct http1_scan *s, __u8 *buf, __u32 line)
{
	__u64 w0, w1, w2;

	http1_fill(s, buf, line + 48);
	if (line + 2 > s->avail)
		return 1; /* the header block goes on past what we may scan */
	if (http1_byte(buf, line) == '\r' && http1_byte(buf, line + 1) == '\n') {
		s->header_end = line + 2;
		return 1;
	}
	if (line + 24 > s->avail)
		return 0;
	w0 = http1_word(buf, line) | LOWER8;
	w1 = http1_word(buf, line + 8) | LOWER8;
	if (w0 == W8('c', 'o', 'n', 't', 'e', 'n', 't', '-') &&
	    (w1 & 0x00ffffffffffffffULL) == W8('l', 'e', 'n', 'g', 't', 'h', ':', 0)) {
		http1_content_length(s, line + 15);
	} else if (w0 == W8('t', 'r', 'a', 'n', 's', 'f', 'e', 'r') &&
		   w1 == W8('-', 'e', 'n', 'c', 'o', 'd', 'i', 'n')) {
		w2 = http1_word(buf, line + 16) | LOWER8;
		if ((w2 & 0xffff) == W8('g', ':', 0, 0, 0, 0, 0, 0))
			s->te_line = line;
	}
	return 0;
}

/* Looks at the next line feed of the current word; 1 when the scan is over. */
static __always_inline long http1_next_line(struct http1_scan *s, __u8 *buf)
{
	__u32 lf = s->word_off + http1_lowest_byte(s->nl_mask);

	s->nl_mask &= s->nl_mask - 1;
	if (lf >= s->avail || http1_byte(buf, lf) != '\n')
		return 0; /* a carry artefact of the word trick, not a line feed */
	if (s->te_line && lf >= s->te_line + 18) {
		/* the Transfer-Encoding line ends here: is its last coding chunked? */
		__u64 tail = http1_word(buf, lf - 8) | LOWER8;
		if ((tail & 0x00ffffffffffffffULL) == W8('c', 'h', 'u', 'n', 'k', 'e', 'd', 0))
			s->chunked = 1;
		s->te_line = 0;
	}
	return http1_line(s, buf, lf + 1);
}

/* One step: up to HTTP1_WORDS_PER_STEP words and the lines they end (a header line is
 * about four words). A global function, so that the verifier checks it once rather
 * than once per loop iteration. */
__noinline int http1_scan_step(struct http1_scan *s)
{
	__u8 *buf = http1_scratch();

	if (!s || !buf)
		return 1;
	for (int i = 0; i < HTTP1_WORDS_PER_STEP; i++) {
		if (!s->nl_mask) {
			__u64 w, x;
			__u32 pos = s->pos;

			if (pos >= s->len)
				return 1;
			http1_fill(s, buf, pos + 8);
			if (pos >= s->avail)
				return 1;
			w = http1_word(buf, pos);
			if (s->avail - pos < 8)
				w |= ~0ULL << ((s->avail - pos) * 8); /* no line feeds past the data */
			x = w ^ LFS8;
			s->nl_mask = (x - ONES8) & ~x & HIGHS8;
			s->word_off = pos;
			s->pos = pos + 8;
			if (!s->nl_mask)
				continue;
		}
		/* two line feeds of a word here ("\r\n\r\n" has two); more wait for the next step */
		if (http1_next_line(s, buf))
			return 1;
		if (s->nl_mask && http1_next_line(s, buf))
			return 1;
		if (s->nl_mask)
			return 0;
	}
	return 0;
}

static long http1_step(__u32 index, void *ctx)
{
	return http1_scan_step(ctx) ? 1 : 0;
}

/* Is this the start of an HTTP/1.x request line (a method and a space)? */
static __always_inline bool http1_is_request(const __u8 *m)
{
	switch (m[0]) {
	case 'G': return m[1] == 'E' && m[2] == 'T' && m[3] == ' ';
	case 'P': return (m[1] == 'O' && m[2] == 'S' && m[3] == 'T' && m[4] == ' ') ||
			 (m[1] == 'U' && m[2] == 'T' && m[3] == ' ') ||
			 (m[1] == 'A' && m[2] == 'T' && m[3] == 'C' && m[4] == 'H');
	case 'H': return m[1] == 'E' && m[2] == 'A' && m[3] == 'D' && m[4] == ' ';
	case 'D': return m[1] == 'E' && m[2] == 'L' && m[3] == 'E' && m[4] == 'T';
	case 'O': return m[1] == 'P' && m[2] == 'T' && m[3] == 'I' && m[4] == 'O';
	case 'C': return m[1] == 'O' && m[2] == 'N' && m[3] == 'N' && m[4] == 'E';
	case 'T': return m[1] == 'R' && m[2] == 'A' && m[3] == 'C' && m[4] == 'E';
	}
	return false;
}

/* The status code of an HTTP/1.x status line, or 0 when m does not start one. */
static __always_inline __u32 http1_status(const __u8 *m)
{
	if (m[0] != 'H' || m[1] != 'T' || m[2] != 'T' || m[3] != 'P' || m[4] != '/' ||
	    m[5] != '1' || m[6] != '.' || m[8] != ' ')
		return 0;
	if (m[9] < '1' || m[9] > '5' || m[10] < '0' || m[10] > '9' || m[11] < '0' || m[11] > '9')
		return 0;
	return (m[9] - '0') * 100 + (m[10] - '0') * 10 + (m[11] - '0');
}

#endif /* OBI_HTTP1_H */
