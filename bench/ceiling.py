"""The client ceiling: a server that costs nothing, to show the client is not the limit."""

from __future__ import annotations

import subprocess
import sys

CEILING_SERVER = r"""
import socket, sys
size = int(sys.argv[1])
lst = socket.socket(); lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lst.bind(("127.0.0.1", 0)); lst.listen(4)
print(lst.getsockname()[1], flush=True)
lst.settimeout(120)
conn, _ = lst.accept()
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
conn.settimeout(120)
body = b"x" * (size - 2) + b"\r\n"
conn.sendall(b"* OK ceiling\r\n")
buf = b""
while True:
    data = conn.recv(65536)
    if not data:
        break
    buf += data
    while b"\n" in buf:
        line, buf = buf.split(b"\n", 1)
        tag = line.split(b" ", 1)[0]
        if b"LOGIN" in line or b"SELECT" in line:
            conn.sendall(tag + b" OK done\r\n")
        elif b"LOGOUT" in line:
            conn.sendall(b"* BYE\r\n" + tag + b" OK done\r\n")
        else:
            conn.sendall(b"* 1 FETCH (BODY[] {%d}\r\n" % size)
            conn.sendall(body)
            conn.sendall(b")\r\n" + tag + b" OK done\r\n")
"""


def start_ceiling_server(size: int) -> tuple[subprocess.Popen[bytes], tuple[str, int]]:
    """A separate process that answers any FETCH with a canned literal from memory: the
    benchmark client alone, with no IMAP server cost, measures its own ceiling against it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CEILING_SERVER, str(size)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return proc, ("127.0.0.1", port)
