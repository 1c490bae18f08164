"""Command line: ``imapproxy [run] ...``, ``check``, ``demo``, ``config-schema`` (the config
reference), ``compile`` (the mypyc core, ``imapproxy.compiled``), and the inspector's
``sessions``, ``kick``, ``tail`` and ``show`` (``imapproxy.inspect.client``)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from imapproxy import __version__, compiled
from imapproxy.config.loader import (
    Address,
    Config,
    ConfigError,
    ControlConfig,
    MetricsConfig,
    Upstream,
    check_config,
    load_config,
    parse_workers,
)
from imapproxy.config.reference import render as render_reference
from imapproxy.inspect import client
from imapproxy.inspect.client import ControlError
from imapproxy.server.capacity import raise_fd_limit
from imapproxy.server.listener import Proxy, reloader
from imapproxy.server.worker import WORKER_FD_ENV, serve_worker
from imapproxy.server.workers import supervise
from imapproxy.telemetry import logs
from imapproxy.telemetry.logs import log_event
from imapproxy.telemetry.recorder import Telemetry

if TYPE_CHECKING:
    from imapproxy.telemetry.metrics import (
        Metrics,  # it and its helpers are the only prometheus_client importers
    )

log = logging.getLogger("imapproxy")


def _address(text: str) -> Address:
    try:
        return Address.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _workers(text: str) -> int:
    try:
        return parse_workers(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _run_parser(prog: str = "imapproxy") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Transparent IMAP proxy and traffic inspector.",
        epilog="Other commands: 'imapproxy check --config FILE', 'imapproxy demo', "
        "'imapproxy sessions|kick|tail|show', 'imapproxy compile' (each with --help).",
    )
    p.add_argument("--upstream", type=_address, help="mail server HOST:PORT (overrides config)")
    p.add_argument(
        "--listen", type=_address, help="client listener HOST:PORT (default 0.0.0.0:143)"
    )
    p.add_argument("--config", type=Path, help="YAML config file")
    p.add_argument(
        "--metrics", help="Prometheus exporter HOST:PORT, or 'off' (default 127.0.0.1:9143)"
    )
    p.add_argument(
        "--workers",
        type=_workers,
        help="worker processes sharing the ports: N or 'auto' (one per CPU; default 1)",
    )
    p.add_argument(
        "--control",
        help="control socket PATH for sessions/kick/tail, or 'off' "
        "(default: $RUNTIME_DIRECTORY/control.sock, /run/imapproxy/control.sock as root)",
    )
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", choices=["json", "text"])
    p.add_argument("--version", action="version", version=f"imapproxy {__version__}")
    return p


def _overrides(args: argparse.Namespace) -> Callable[[Config], Config]:
    """Command-line flags win over the file, on start and on every reload."""

    def apply(cfg: Config) -> Config:
        if args.upstream is not None:
            up = cfg.upstream or Upstream(address=args.upstream)
            cfg = dataclasses.replace(cfg, upstream=dataclasses.replace(up, address=args.upstream))
        if args.listen is not None:
            # Only the address: the file's proxy_protocol/trusted_networks stay.
            cfg = dataclasses.replace(
                cfg, listen=dataclasses.replace(cfg.listen, address=args.listen)
            )
        if args.metrics is not None:
            addr = None if args.metrics == "off" else _address(args.metrics)
            cfg = dataclasses.replace(cfg, metrics=MetricsConfig(address=addr))
        if args.control == "off":
            cfg = dataclasses.replace(cfg, control=ControlConfig(None))
        elif args.control is not None:
            cfg = dataclasses.replace(cfg, control=ControlConfig(Path(args.control)))
        elif cfg.control.socket is None and (default := default_control_socket()) is not None:
            cfg = dataclasses.replace(cfg, control=ControlConfig(default, required=False))
        log_cfg = cfg.log
        if args.log_level:
            log_cfg = dataclasses.replace(log_cfg, level=args.log_level)
        if args.log_format:
            log_cfg = dataclasses.replace(log_cfg, format=args.log_format)
        return dataclasses.replace(cfg, log=log_cfg)

    return apply


def run(argv: Sequence[str]) -> int:
    args = _run_parser().parse_args(argv)
    apply = _overrides(args)
    try:
        cfg = apply(load_config(args.config) if args.config else Config())
    except ConfigError as exc:
        print(f"imapproxy: {exc}", file=sys.stderr)
        return 2
    if cfg.upstream is None:
        print(
            "imapproxy: no upstream: give --upstream HOST:PORT or 'upstream:' in the config "
            "(or try 'imapproxy demo')",
            file=sys.stderr,
        )
        return 2
    logs.configure(cfg.log.level, cfg.log.format, cfg.log.file)
    reload = reloader(args.config, apply) if args.config else None
    worker_fd = os.environ.get(WORKER_FD_ENV)
    if worker_fd is not None:  # started by a supervising parent (server.workers)
        return serve_worker(cfg, reload, int(worker_fd))
    workers = args.workers if args.workers is not None else cfg.workers
    if workers > 1:
        return supervise(cfg, argv, workers)
    return serve(cfg, reload)


def serve(
    cfg: Config,
    reload: Callable[[], Config] | None,
    *,
    banner: Callable[[Proxy], str] | None = None,
) -> int:
    proxy: Proxy

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(proxy.serve)
            if banner is not None:
                print(banner(proxy), flush=True)
        # Stopped: a second SIGINT has nothing left to stop. trio closes its wakeup socket
        # before it restores the signal wakeup fd, and a signal in between makes Python print
        # "Exception ignored ... BrokenPipeError": ignore SIGINT until trio has returned.
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    failed = interrupted = False
    raise_fd_limit(cfg.limits.max_sessions)
    compiled.log_running()
    previous = signal.getsignal(signal.SIGINT)
    try:
        telemetry = Telemetry(_start_metrics(cfg))
        proxy = Proxy(cfg, telemetry, reload_config=reload)
        try:
            trio.run(main)
        finally:
            if previous is not None:  # (None: not set from Python; nothing to restore)
                signal.signal(signal.SIGINT, previous)
    except* KeyboardInterrupt:
        # A second SIGINT while stopping (Ctrl-C twice, or a supervisor forwarding its own):
        # trio re-raises it as the signal receiver closes. The stop was asked for: no traceback.
        interrupted = True
    except* OSError as group:
        # Start-up failures (port taken, no privilege, unusable certificate): one line each,
        # no traceback. The nursery wraps them in an exception group.
        failed = True
        for exc in group.exceptions:
            log_event(log, "fatal", error=str(exc), level=logging.CRITICAL)
            print(f"imapproxy: {exc}", file=sys.stderr)
    if failed:
        return 1
    return 130 if interrupted else 0


def _start_metrics(cfg: Config) -> Metrics | None:
    if cfg.metrics.address is None:
        return None
    from imapproxy.telemetry.metrics import Metrics

    metrics = Metrics(core=compiled.running())
    metrics.serve(cfg.metrics.address.host, cfg.metrics.address.port)
    return metrics


def check(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="imapproxy check", description="Validate a config file.")
    p.add_argument("--config", type=Path, required=True)
    args = p.parse_args(argv)
    problem = check_config(args.config)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 1
    print(f"{args.config}: OK")
    return 0


def demo(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="imapproxy demo",
        description="Start a throwaway local Dovecot with a demo user and proxy to it.",
    )
    p.add_argument("--listen", type=_address, default=Address("127.0.0.1", 1143))
    p.add_argument("--metrics", type=_address, default=Address("127.0.0.1", 9143))
    p.add_argument(
        "--config", type=Path, help="rules and settings to apply (upstream is the demo's)"
    )
    args = p.parse_args(argv)
    from imapproxy.demo.banner import demo_banner, start_demo_upstream  # demo mode only

    try:
        base = load_config(args.config) if args.config else Config()
    except ConfigError as exc:
        print(f"imapproxy: {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="imapproxy-demo-") as tmp:
        dovecot = start_demo_upstream(Path(tmp))
        try:
            up = Address(*dovecot.address)
            cfg = dataclasses.replace(
                base,
                listen=dataclasses.replace(base.listen, address=args.listen),
                upstream=Upstream(address=up),
                metrics=MetricsConfig(address=args.metrics),
            )
            logs.configure(cfg.log.level, "text")

            def banner(proxy: Proxy) -> str:
                return demo_banner(proxy.bound[0], _pair(cfg.metrics.address), dovecot.address)

            return serve(cfg, None, banner=banner)
        finally:
            # A second Ctrl-C (or a supervisor forwarding its own) once trio has given the
            # default handler back must not cut the clean-up short and leave Dovecot running.
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                dovecot.stop()
            finally:
                signal.signal(signal.SIGINT, previous)


def default_control_socket() -> Path | None:
    """``$RUNTIME_DIRECTORY/control.sock`` under systemd, ``/run/imapproxy/control.sock``
    as root, else none (a control socket must then be configured)."""
    runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if runtime:
        return Path(runtime) / "control.sock"
    if os.geteuid() == 0:
        return Path("/run/imapproxy/control.sock")
    return None


def _inspect_parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"imapproxy {prog}", description=description)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--control", type=Path, help="the proxy's control socket")
    where.add_argument("--config", type=Path, help="the proxy's config file (its control.socket)")
    return p


def _control_path(args: argparse.Namespace) -> Path:
    if args.control is not None:
        return Path(args.control)
    if args.config is not None:
        try:
            cfg = load_config(args.config)
        except ConfigError as exc:
            raise ControlError(str(exc)) from None
        if cfg.control.socket is not None:
            return cfg.control.socket
    default = default_control_socket()
    if default is None:
        raise ControlError("no control socket known: give --control PATH or --config FILE")
    return default


def inspect(command: str, argv: Sequence[str]) -> int:
    """``sessions``, ``kick``, ``tail``, ``show``: exit 1 with one line on any failure."""
    try:
        if command == "show":
            p = argparse.ArgumentParser(
                prog="imapproxy show", description="Render a trace file like 'tail'."
            )
            p.add_argument("trace", type=Path)
            return client.show(p.parse_args(argv).trace)
        if command == "sessions":
            p = _inspect_parser("sessions", "List live sessions (like doveadm who).")
            p.add_argument("--json", action="store_true", help="a JSON array")
            p.add_argument("--watch", action="store_true", help="redraw every second")
            args = p.parse_args(argv)
            return client.sessions(_control_path(args), as_json=args.json, watch=args.watch)
        if command == "kick":
            p = _inspect_parser("kick", "End sessions: the client gets BYE [UNAVAILABLE].")
            which = p.add_mutually_exclusive_group(required=True)
            which.add_argument("--session", type=int)
            which.add_argument("--user", help="glob, e.g. 'alice@*'")
            which.add_argument("--client", help="CIDR, e.g. 10.1.2.0/24")
            p.add_argument("--reason", help="text after BYE [UNAVAILABLE]")
            args = p.parse_args(argv)
            selector = {k: getattr(args, k) for k in ("session", "user", "client")}
            selector = {k: v for k, v in selector.items() if v is not None}
            return client.kick(_control_path(args), selector, args.reason)
        p = _inspect_parser("tail", "Live, redacted stream of what passes through the proxy.")
        p.add_argument("--user", action="append", help="glob (repeatable)")
        p.add_argument("--command", help="comma-separated command names, e.g. FETCH,IDLE")
        p.add_argument("--session", type=int)
        p.add_argument("--client", action="append", help="CIDR (repeatable)")
        p.add_argument("--bodies", type=int, default=0, help="literal payload bytes to show")
        p.add_argument("--json", action="store_true", help="JSON lines (default off a tty)")
        args = p.parse_args(argv)
        flt: dict[str, object] = {}
        if args.user:
            flt["user"] = args.user
        if args.command:
            flt["command"] = [c.strip() for c in args.command.split(",") if c.strip()]
        if args.session is not None:
            flt["session"] = args.session
        if args.client:
            flt["client"] = args.client
        as_json = args.json or not sys.stdout.isatty()
        return client.tail(_control_path(args), flt, max(0, args.bodies), as_json=as_json)
    except ControlError as exc:
        print(f"imapproxy: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        return 0


def _pair(addr: Address | None) -> tuple[str, int] | None:
    return None if addr is None else (addr.host, addr.port)


def config_schema(argv: Sequence[str]) -> int:
    """``imapproxy config-schema``: print the configuration reference (Markdown)."""
    argparse.ArgumentParser(
        prog="imapproxy config-schema",
        description="Print the configuration reference as Markdown (docs/configuration.md).",
    ).parse_args(argv)
    sys.stdout.write(render_reference())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _command(list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:
        # Ctrl-C outside trio's own handling (before the run starts, or after it returned
        # while the process winds down): the stop was asked for, no traceback.
        return 130


def _command(argv: list[str]) -> int:
    if argv and argv[0] == "check":
        return check(argv[1:])
    if argv and argv[0] == "demo":
        return demo(argv[1:])
    if argv and argv[0] == "config-schema":
        return config_schema(argv[1:])
    if argv and argv[0] == "compile":
        return compiled.main(argv[1:])
    if argv and argv[0] in ("sessions", "kick", "tail", "show"):
        return inspect(argv[0], argv[1:])
    if argv and argv[0] == "run":
        argv = argv[1:]
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
