/* obi._http1: an HTTP/1 request's header block, read in C.
 *
 * request_headers() says what obi.protocols.http._request_headers_py says of the same bytes,
 * value for value (tests/protocols/test_http1_native.py holds the two to each other); it is
 * the once-per-request part of the HTTP/1 path, where the Python reads the block five times
 * over (a lower-cased copy, a find per header name, argument parsing for each).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define MAX_LENGTH_DIGITS 18 /* a longer Content-Length is not believed (the Python's rule) */

/* Header names as they follow a CRLF, lower case. */
static const char HOST[] = "host:";
static const char TRACEPARENT[] = "traceparent:";
static const char CONTENT_LENGTH[] = "content-length:";
static const char TRANSFER_ENCODING[] = "transfer-encoding:";
#define NAME_LEN(name) ((Py_ssize_t)sizeof(name) - 1)

struct span {
	Py_ssize_t start, end; /* [start, end) in the data; start < 0: not found */
};

static inline char ascii_lower(char c)
{
	return c >= 'A' && c <= 'Z' ? (char)(c + 32) : c;
}

/* Whether s (n bytes available) starts with name (lower case), ignoring ASCII case. */
static int starts_with_name(const char *s, Py_ssize_t n, const char *name, Py_ssize_t len)
{
	if (n < len)
		return 0;
	for (Py_ssize_t i = 0; i < len; i++)
		if (ascii_lower(s[i]) != name[i])
			return 0;
	return 1;
}

/* First "\r\n" starting at or after from and ending before end; -1 when none. */
static Py_ssize_t find_crlf(const char *s, Py_ssize_t from, Py_ssize_t end)
{
	while (from + 1 < end) {
		const char *cr = memchr(s + from, '\r', (size_t)(end - 1 - from));
		if (cr == NULL)
			return -1;
		from = cr - s;
		if (s[from + 1] == '\n')
			return from;
		from += 1;
	}
	return -1;
}

/* The value after a header name that ends at from: up to the next CRLF (raw ends in one),
 * optional white space stripped at both ends. */
static struct span header_value(const char *s, Py_ssize_t from, Py_ssize_t raw_end)
{
	struct span v = {from, find_crlf(s, from, raw_end)};

	if (v.end < 0) /* not so: the block ends in a CRLF that no header name overlaps */
		v.end = raw_end - 1 > from ? raw_end - 1 : from;
	while (v.start < v.end && (s[v.start] == ' ' || s[v.start] == '\t'))
		v.start++;
	while (v.end > v.start && (s[v.end - 1] == ' ' || s[v.end - 1] == '\t'))
		v.end--;
	return v;
}

static PyObject *decoded_or_none(const char *s, struct span v)
{
	if (v.start < 0)
		Py_RETURN_NONE;
	return PyUnicode_DecodeUTF8(s + v.start, v.end - v.start, "replace");
}

/* request_headers(data, line_end, total_len, method, target, path, version, cls) -> cls
 *
 * line_end: the offset of the CRLF that ends the request line. cls: HttpRequestFacts (a tuple
 * subclass of ten fields: method, target, path, version, host, content_length, body_size,
 * traceparent, header_len, end). */
static PyObject *request_headers(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
	const char *s;
	Py_ssize_t len, line_end, total_len, raw_end, header_len, at;
	struct span host = {-1, -1}, traceparent = {-1, -1}, length = {-1, -1}, coding = {-1, -1};
	long long content_length = -1; /* -1: None */
	Py_ssize_t body_size, end;
	PyTypeObject *cls;
	PyObject *facts, *item;

	(void)module;
	if (nargs != 8) {
		PyErr_SetString(PyExc_TypeError, "request_headers() takes 8 arguments");
		return NULL;
	}
	if (!PyBytes_Check(args[0]) || !PyType_Check(args[7]) ||
	    !PyType_IsSubtype((PyTypeObject *)args[7], &PyTuple_Type)) {
		PyErr_SetString(PyExc_TypeError, "request_headers(bytes, int, int, ..., tuple subclass)");
		return NULL;
	}
	s = PyBytes_AS_STRING(args[0]);
	len = PyBytes_GET_SIZE(args[0]);
	line_end = PyLong_AsSsize_t(args[1]);
	total_len = PyLong_AsSsize_t(args[2]);
	if ((line_end == -1 || total_len == -1) && PyErr_Occurred())
		return NULL;
	if (line_end < 0 || line_end > len) {
		PyErr_SetString(PyExc_ValueError, "line_end outside the data");
		return NULL;
	}
	cls = (PyTypeObject *)args[7];

	/* the block: from the request line's CRLF to the CRLF before the empty line, or, cut
	 * short, to the last whole line captured */
	header_len = -1;
	raw_end = line_end; /* empty */
	for (at = find_crlf(s, line_end, len); at >= 0; at = find_crlf(s, at + 2, len)) {
		if (at + 3 < len && s[at + 2] == '\r' && s[at + 3] == '\n') {
			header_len = at + 4;
			raw_end = at + 2;
			break;
		}
	}
	if (header_len < 0) {
		/* the last CRLF in the data, which may end before line_end (then no block) */
		for (at = len - 2; at >= 0; at--)
			if (s[at] == '\r' && s[at + 1] == '\n')
				break;
		if (at >= line_end)
			raw_end = at + 2;
	}

	/* the first line of each header this needs (a name right after a CRLF) */
	for (at = find_crlf(s, line_end, raw_end); at >= 0; at = find_crlf(s, at + 1, raw_end)) {
		const char *name = s + at + 2;
		Py_ssize_t room = raw_end - (at + 2);

		switch (ascii_lower(*name)) {
		case 'h':
			if (host.start < 0 && starts_with_name(name, room, HOST, NAME_LEN(HOST)))
				host = header_value(s, at + 2 + NAME_LEN(HOST), raw_end);
			break;
		case 't':
			if (traceparent.start < 0 && starts_with_name(name, room, TRACEPARENT, NAME_LEN(TRACEPARENT)))
				traceparent = header_value(s, at + 2 + NAME_LEN(TRACEPARENT), raw_end);
			else if (coding.start < 0 &&
				 starts_with_name(name, room, TRANSFER_ENCODING, NAME_LEN(TRANSFER_ENCODING)))
				coding = header_value(s, at + 2 + NAME_LEN(TRANSFER_ENCODING), raw_end);
			break;
		case 'c':
			if (length.start < 0 &&
			    starts_with_name(name, room, CONTENT_LENGTH, NAME_LEN(CONTENT_LENGTH)))
				length = header_value(s, at + 2 + NAME_LEN(CONTENT_LENGTH), raw_end);
			break;
		}
	}

	if (length.start >= 0 && length.end > length.start && length.end - length.start <= MAX_LENGTH_DIGITS) {
		int chunked = 0;

		content_length = 0;
		for (at = length.start; at < length.end; at++) {
			if (s[at] < '0' || s[at] > '9') {
				content_length = -1;
				break;
			}
			content_length = content_length * 10 + (s[at] - '0');
		}
		for (at = coding.start; coding.start >= 0 && at + 7 <= coding.end; at++)
			if (starts_with_name(s + at, coding.end - at, "chunked", 7)) {
				chunked = 1;
				break;
			}
		if (chunked)
			content_length = -1;
	}
	if (content_length >= 0) {
		body_size = (Py_ssize_t)content_length;
		end = header_len < 0 ? -1 : header_len + (Py_ssize_t)content_length;
	} else if (length.start >= 0 || coding.start >= 0) {
		/* chunked, or a Content-Length that is not a number: the bytes after the block */
		body_size = header_len >= 0 && total_len > header_len ? total_len - header_len : 0;
		end = -1;
	} else {
		body_size = 0; /* no Content-Length, no transfer coding: no body */
		end = header_len;
	}

	facts = cls->tp_alloc(cls, 10);
	if (facts == NULL)
		return NULL;
	for (int i = 0; i < 4; i++) {
		Py_INCREF(args[3 + i]);
		PyTuple_SET_ITEM(facts, i, args[3 + i]);
	}
#define SET(i, value)                          \
	do {                                   \
		item = (value);                \
		if (item == NULL)              \
			goto fail;             \
		PyTuple_SET_ITEM(facts, i, item); \
	} while (0)
	SET(4, decoded_or_none(s, host));
	if (content_length >= 0)
		SET(5, PyLong_FromLongLong(content_length));
	else
		SET(5, Py_NewRef(Py_None));
	SET(6, PyLong_FromSsize_t(body_size));
	SET(7, decoded_or_none(s, traceparent));
	SET(8, PyLong_FromSsize_t(header_len));
	SET(9, PyLong_FromSsize_t(end));
#undef SET
	return facts;
fail:
	Py_DECREF(facts);
	return NULL;
}

static PyMethodDef methods[] = {
	{"request_headers", (PyCFunction)(void (*)(void))request_headers, METH_FASTCALL,
	 "The facts of an HTTP/1 request's header block (obi.protocols.http._request_headers_py)."},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
	PyModuleDef_HEAD_INIT, "obi._http1", "HTTP/1 request header blocks, read in C.", -1, methods,
	NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__http1(void)
{
	return PyModule_Create(&module);
}
