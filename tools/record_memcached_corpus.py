"""Records real Memcached exchanges into tests/protocols/corpus/memcached.jsonl.

Starts Debian's memcached on a free loopback port (TCP only, items up to 8 KiB), sends each case's request
bytes on a fresh connection as one write, and keeps what the server answered (until it is
quiet for 200 ms). The commands of each case are their names as sent, in order.

Usage: python tools/record_memcached_corpus.py   (needs memcached; rewrites the corpus)
"""

from __future__ import annotations

import subprocess
import sys

from corpus_recording import exchange, free_port, wait_for_port, write_corpus


def cases() -> list[tuple[str, list[str], bytes]]:
    big = b"v" * 6000
    return [
        ("set-get", ["set", "get"], b"set user:1 0 0 5\r\nalice\r\nget user:1\r\n"),
        ("get-miss", ["get"], b"get nothing:here\r\n"),
        ("multi-get", ["set", "set", "get"], b"set a 0 0 1\r\n1\r\nset b 5 0 2\r\n22\r\nget a b c\r\n"),
        ("gets-cas-exists", ["gets", "cas"], b"gets a\r\ncas a 0 0 1 1\r\n9\r\n"),
        ("noreply", ["set", "delete", "get"], b"set k 0 0 1 noreply\r\nx\r\ndelete b noreply\r\nget k\r\n"),
        ("incr-decr", ["set", "incr", "decr", "incr"],
         b"set n 0 0 2\r\n10\r\nincr n 5\r\ndecr n 3\r\nincr missing 1\r\n"),
        ("incr-not-a-number", ["set", "incr"], b"set s 0 0 1\r\nx\r\nincr s 1\r\n"),
        ("add-replace-append", ["add", "replace", "append", "prepend", "get"],
         b"add a 0 0 1\r\n2\r\nreplace gone 0 0 1\r\n2\r\nappend a 0 0 2\r\n-x\r\nprepend a 0 0 2\r\nx-\r\nget a\r\n"),
        ("delete-touch", ["delete", "delete", "touch", "touch"],
         b"delete a\r\ndelete a\r\ntouch k 100\r\ntouch gone 100\r\n"),
        ("too-large", ["set"], b"set huge 0 0 10000\r\n" + b"h" * 10000 + b"\r\n"),  # past -I 8k
        ("big-value", ["set", "get"], b"set big 0 0 6000\r\n" + big + b"\r\nget big\r\n"),
        ("version-verbosity", ["version", "verbosity"], b"version\r\nverbosity 1\r\n"),
        ("stats", ["stats"], b"stats\r\n"),
        ("gat", ["gat", "gats"], b"gat 100 k\r\ngats 100 k gone\r\n"),
        ("meta", ["ms", "mg", "mg", "md", "ma", "mn"],
         b"ms mk 2 T0\r\nhi\r\nmg mk v\r\nmg missing v\r\nmd mk\r\nma n\r\nmn\r\n"),
        ("meta-quiet", ["mg", "mg", "mn"], b"mg k v q\r\nmg missing v q\r\nmn\r\n"),
        ("flush", ["flush_all"], b"flush_all\r\n"),
    ]


def main() -> int:
    port = free_port()
    server = subprocess.Popen(["memcached", "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "64", "-I", "8k",
                               "-o", "slab_chunk_max=4096", "-u", "root"], stdout=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        exchange(port, b"set k 0 0 1\r\nk\r\n")
        write_corpus("memcached", port, cases())
    finally:
        server.terminate()
        server.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
