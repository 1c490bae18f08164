"""TLS cost of imapproxy: bulk FETCH throughput with TLS on both legs vs plaintext, and
TLS handshakes (connect, handshake, greeting, close) per second.

    python3 bench/tls_bench.py [--quick] [--rounds N] [--key-type ecdsa|rsa] [--json FILE]

Standalone (needs dovecot-imapd, trustme and the package installed). It starts one Dovecot
on 127.0.0.1 (plaintext and implicit-TLS listeners, a trustme certificate), seeds a 10 MB
message, and two imapproxy processes:

* ``P1``: plaintext listener and implicit-TLS listener, plaintext upstream;
* ``P2``: the same listeners, implicit-TLS upstream (verified against the trustme CA);
* ``P3``: plaintext listener, STARTTLS upstream (only for the connect rate).

Targets (client leg / upstream leg) are interleaved round by round (A B C A B C ...) so
drift on this shared 2-core machine hits them alike; figures are medians over rounds, and
only ratios within one run mean anything. Every process is stopped by the PID it started.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import re
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trustme

from imapproxy.demo.dovecot import Dovecot, TLSFiles

USER, PASSWORD = "bench", "bench-pass"
BULK_SIZE = 10 * 1024 * 1024
_LITERAL = re.compile(rb"\{(\d+)\}\r\n\Z")
# Reuse imap processes: the bench is about the relay, not Dovecot forking per login.
DOVECOT_EXTRA = "service imap {\n  service_count = 0\n  process_min_avail = 2\n}\n"


# --- a minimal client ----------------------------------------------------------------------
class Client:
    """Blocking IMAP client; literal payloads go into a scratch buffer and are dropped."""

    def __init__(self, address: tuple[str, int], ctx: ssl.SSLContext | None) -> None:
        sock = socket.create_connection(address, timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock: socket.socket = (
            ctx.wrap_socket(sock, server_hostname="localhost") if ctx else sock
        )
        self.buf = bytearray()
        self.sink = memoryview(bytearray(1 << 20))

    def line(self) -> bytes:
        while (end := self.buf.find(b"\n")) < 0:
            chunk = self.sock.recv(256 * 1024)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk
        line = bytes(self.buf[: end + 1])
        del self.buf[: end + 1]
        return line

    def skip(self, n: int) -> None:
        take = min(n, len(self.buf))
        del self.buf[:take]
        n -= take
        while n:
            got = self.sock.recv_into(self.sink, min(n, len(self.sink)))
            if not got:
                raise EOFError("connection closed in a literal")
            n -= got

    def command(self, tag: bytes, text: bytes) -> int:
        """Run a command; return the literal bytes received."""
        self.sock.sendall(tag + b" " + text + b"\r\n")
        payload = 0
        while True:
            line = self.line()
            if m := _LITERAL.search(line):
                size = int(m.group(1))
                self.skip(size)
                payload += size
            elif line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    raise RuntimeError(line.decode(errors="replace"))
                return payload

    def close(self) -> None:
        self.sock.close()


# --- the systems under test -----------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"imapproxy exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


@dataclass
class Proxy:
    proc: subprocess.Popen[bytes]
    plain: tuple[str, int]
    tls: tuple[str, int] | None


def _start_proxy(work: Path, name: str, upstream: str) -> Proxy:
    plain, tls = _free_port(), _free_port()
    listen_tls = (
        ""
        if "starttls" in upstream
        else (f'listen_tls: {{address: "127.0.0.1:{tls}", cert: cert.pem, key: key.pem}}\n')
    )
    config = work / f"{name}.yaml"
    config.write_text(
        f'listen: "127.0.0.1:{plain}"\n{listen_tls}upstream: {upstream}\n'
        "metrics: {address: null}\nlog: {level: warning}\n"
    )
    log = open(work / f"{name}.log", "wb")  # noqa: SIM115 - the child keeps it
    proc = subprocess.Popen(
        [sys.executable, "-m", "imapproxy", "--config", str(config)],
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
    )
    _wait_port(plain, proc)
    if listen_tls:
        _wait_port(tls, proc)
    return Proxy(proc, ("127.0.0.1", plain), ("127.0.0.1", tls) if listen_tls else None)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _big_message() -> bytes:
    rnd = random.Random(1)
    head = (
        b"From: bench@example.test\r\nTo: bench@example.test\r\nSubject: bulk\r\n"
        b"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    )
    raw = base64.encodebytes(rnd.randbytes(BULK_SIZE * 3 // 4)).replace(b"\n", b"\r\n")
    return head + raw[: BULK_SIZE - len(head) - 2] + b"\r\n"


# --- workloads -------------------------------------------------------------------------------
@dataclass
class Target:
    name: str
    address: tuple[str, int]
    ctx: ssl.SSLContext | None  # None: plaintext client leg
    pid: int | None  # the relay, for its CPU time


def bulk(t: Target, fetches: int) -> tuple[float, float | None]:
    """MB/s (10^6 bytes) of FETCH payload, and the relay's CPU seconds per 100 MB."""
    c = Client(t.address, t.ctx)
    c.line()
    c.command(b"l", f"LOGIN {USER} {PASSWORD}".encode())
    c.command(b"s", b"SELECT INBOX")
    cpu0 = _cpu_seconds(t.pid) if t.pid else 0.0
    t0 = time.perf_counter()
    total = sum(c.command(b"f%d" % i, b"FETCH 1 BODY.PEEK[]") for i in range(fetches))
    elapsed = time.perf_counter() - t0
    cpu = (_cpu_seconds(t.pid) - cpu0) / (total / 1e8) if t.pid else None
    c.command(b"z", b"LOGOUT")
    c.close()
    return total / elapsed / 1e6, cpu


def connects(t: Target, seconds: float, threads: int) -> float:
    """Connections per second that got the greeting: TCP + TLS handshake (full, no
    resumption: a new context per connection) + the proxy's upstream connection."""
    stop = time.monotonic() + seconds
    counts = [0] * threads

    def worker(i: int) -> None:
        while time.monotonic() < stop:
            ctx = _fresh(t.ctx)
            c = Client(t.address, ctx)
            if not c.line().startswith(b"* OK"):
                raise RuntimeError("no greeting")
            c.close()
            counts[i] += 1

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    t0 = time.monotonic()
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    return sum(counts) / (time.monotonic() - t0)


_CA_PEM: bytes = b""


def _fresh(ctx: ssl.SSLContext | None) -> ssl.SSLContext | None:
    if ctx is None:
        return None
    fresh = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    fresh.load_verify_locations(cadata=_CA_PEM.decode())
    return fresh


def interleave(
    targets: list[Target], rounds: int, run: Callable[[Target], float]
) -> dict[str, list[float]]:
    for t in targets:
        run(t)  # warm-up
    results: dict[str, list[float]] = {t.name: [] for t in targets}
    for _ in range(rounds):
        for t in targets:
            try:
                results[t.name].append(run(t))
            except Exception as exc:
                raise RuntimeError(f"target {t.name!r} failed: {exc!r}") from exc
    return results


def main() -> int:
    global _CA_PEM
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 rounds, shorter trials")
    p.add_argument("--rounds", type=int)
    p.add_argument("--key-type", choices=["ecdsa", "rsa"], default="ecdsa")
    p.add_argument("--threads", type=int, default=4, help="concurrent connecting clients")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    rounds = args.rounds or (2 if args.quick else 5)
    fetches = 3 if args.quick else 8
    seconds = 1.0 if args.quick else 3.0

    key_type = trustme.KeyType.RSA if args.key_type == "rsa" else trustme.KeyType.ECDSA
    ca = trustme.CA(key_type=key_type)
    _CA_PEM = ca.cert_pem.bytes()
    leaf = ca.issue_cert("localhost", "127.0.0.1", common_name="localhost", key_type=key_type)
    with tempfile.TemporaryDirectory(prefix="imapproxy-tls-bench-") as tmp:
        work = Path(tmp)
        (work / "cert.pem").write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(work / "key.pem"))
        ca.cert_pem.write_to_path(str(work / "ca.pem"))
        dovecot = Dovecot(
            work / "dovecot",
            {USER: PASSWORD},
            tls=TLSFiles(work / "cert.pem", work / "key.pem"),
            extra_config=DOVECOT_EXTRA,
        )
        procs: list[subprocess.Popen[bytes]] = []
        try:
            dovecot.start()
            dovecot.deliver(USER, _big_message())
            assert dovecot.tls_address is not None
            up_plain = f'"127.0.0.1:{dovecot.port}"'
            up_tls = f'{{address: "127.0.0.1:{dovecot.tls_port}", tls: implicit, ca_file: ca.pem}}'
            up_starttls = f'{{address: "127.0.0.1:{dovecot.port}", tls: starttls, ca_file: ca.pem}}'
            p1 = _start_proxy(work, "p1", up_plain)
            p2 = _start_proxy(work, "p2", up_tls)
            p3 = _start_proxy(work, "p3", up_starttls)
            procs += [p1.proc, p2.proc, p3.proc]
            assert p1.tls is not None and p2.tls is not None
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ca.configure_trust(ctx)
            direct_plain = Target("direct plain", dovecot.address, None, None)
            direct_tls = Target("direct TLS", dovecot.tls_address, ctx, None)
            plain_plain = Target("proxy plain/plain", p1.plain, None, p1.proc.pid)
            tls_plain = Target("proxy TLS/plain", p1.tls, ctx, p1.proc.pid)
            plain_tls = Target("proxy plain/TLS", p2.plain, None, p2.proc.pid)
            tls_tls = Target("proxy TLS/TLS", p2.tls, ctx, p2.proc.pid)
            plain_starttls = Target("proxy plain/STARTTLS", p3.plain, None, p3.proc.pid)

            bulk_targets = [direct_plain, direct_tls, plain_plain, tls_plain, plain_tls, tls_tls]
            cpu: dict[str, list[float]] = {t.name: [] for t in bulk_targets}

            def bulk_run(t: Target) -> float:
                rate, relay_cpu = bulk(t, fetches)
                if relay_cpu is not None:
                    cpu[t.name].append(relay_cpu)
                return rate

            mbps = interleave(bulk_targets, rounds, bulk_run)
            conn_targets = [
                direct_plain,
                direct_tls,
                plain_plain,
                tls_plain,
                tls_tls,
                plain_starttls,
            ]
            rate = interleave(conn_targets, rounds, lambda t: connects(t, seconds, args.threads))
        except BaseException:
            for log in [*sorted(work.glob("*.log")), dovecot.log_path]:
                tail = log.read_text(errors="replace").splitlines()[-15:]
                print(f"--- {log.name}\n" + "\n".join(tail), file=sys.stderr)
            raise
        finally:
            for proc in procs:
                _stop(proc)
            dovecot.stop()

    med = {k: statistics.median(v) for k, v in mbps.items()}
    print(f"\n## bulk FETCH of a 10 MB message ({fetches} per trial, median of {rounds})\n")
    print("| target (client/upstream) | MB/s | vs proxy plain/plain | relay CPU s per 100 MB |")
    print("|---|---:|---:|---:|")
    for name, value in med.items():
        c = f"{statistics.median(cpu[name]):.3f}" if cpu[name] else "-"
        print(f"| {name} | {value:.0f} | {value / med['proxy plain/plain']:.2f} | {c} |")
    cmed = {k: statistics.median(v) for k, v in rate.items()}
    print(
        f"\n## connect + handshake + greeting per second ({args.threads} clients, "
        f"{args.key_type} certificate, no session resumption)\n"
    )
    print("| target (client/upstream) | per second |")
    print("|---|---:|")
    for name, value in cmed.items():
        print(f"| {name} | {value:.0f} |")
    if args.json:
        args.json.write_text(json.dumps({"bulk_mbps": mbps, "relay_cpu": cpu, "connects": rate}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
