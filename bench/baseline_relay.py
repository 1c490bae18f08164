"""Reference relays for the benchmark: the floor cost of the runtime, without any IMAP parsing.

    python3 bench/baseline_relay.py {trio,asyncio} LISTEN_PORT UPSTREAM_HOST:PORT

* ``trio``: the same shape as imapproxy's driver (one nursery per session, one task per
  direction, ``receive_some`` -> ``send_all`` with a 256 KiB receive size), minus the parser,
  the session state machine, the send locks and the idle-deadline updates. Whatever imapproxy
  costs above this is imapproxy's own code; what this costs above haproxy is trio's.
* ``asyncio``: a plain byte pump on asyncio streams (``read(256 KiB)`` -> ``write``), for
  comparison with the "simple asyncio relay" figures in issue 2.

Both set TCP_NODELAY on both legs. Loopback only; bench/targets.py starts and stops them.
"""

from __future__ import annotations

import contextlib
import socket
import sys

RECEIVE_SIZE = 256 * 1024


def run_trio(port: int, up_host: str, up_port: int) -> None:
    import trio

    async def pump(src: trio.SocketStream, dst: trio.SocketStream) -> None:
        try:
            while True:
                data = await src.receive_some(RECEIVE_SIZE)
                if not data:
                    break
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    async def handle(client: trio.SocketStream) -> None:
        try:
            upstream = await trio.open_tcp_stream(up_host, up_port)
        except OSError:
            await client.aclose()
            return
        async with client, upstream, trio.open_nursery() as nursery:

            async def one_way(a: trio.SocketStream, b: trio.SocketStream) -> None:
                await pump(a, b)
                nursery.cancel_scope.cancel()

            nursery.start_soon(one_way, client, upstream)
            nursery.start_soon(one_way, upstream, client)

    async def main() -> None:
        await trio.serve_tcp(handle, port, host="127.0.0.1")

    trio.run(main)


def run_asyncio(port: int, up_host: str, up_port: int) -> None:
    import asyncio

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.read(RECEIVE_SIZE)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection(up_host, up_port)
        except OSError:
            cw.close()
            return
        for w in (cw, uw):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(pump(cr, uw), pump(ur, cw))

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, limit=RECEIVE_SIZE)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def main() -> None:
    kind, port, upstream = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    host, up_port = upstream.rsplit(":", 1)
    with contextlib.suppress(KeyboardInterrupt):
        {"trio": run_trio, "asyncio": run_asyncio}[kind](port, host, int(up_port))


if __name__ == "__main__":
    main()
