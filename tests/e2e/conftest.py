"""End-to-end fixtures: the proxy running in-process (trio) in front of the real Dovecot."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest
import trio

from imapproxy.config.loader import Address, Config, Limits, MetricsConfig, Upstream
from imapproxy.demo.dovecot import Dovecot
from imapproxy.server.listener import Proxy
from imapproxy.telemetry.recorder import Telemetry


@dataclass
class RunningProxy:
    proxy: Proxy
    address: tuple[str, int]


ProxyFactory = Callable[..., Awaitable[RunningProxy]]


@pytest.fixture
async def proxy_factory(nursery: trio.Nursery, dovecot: Dovecot) -> ProxyFactory:
    """Start a proxy on a free loopback port; ``config`` fields not given default to a plain
    pass-through in front of the test Dovecot. Stopped when the test ends."""

    async def start(
        config: Config | None = None, telemetry: Telemetry | None = None
    ) -> RunningProxy:
        # Without a config: no per-address / per-user limits, so tests may open hundreds of
        # sessions as one user from 127.0.0.1 (tests/e2e/test_limits.py covers the limits).
        cfg = config or Config(limits=Limits(max_sessions_per_ip=0, max_sessions_per_user=0))
        upstream = cfg.upstream or Upstream(address=Address(*dovecot.address))
        cfg = dataclasses.replace(
            cfg,
            listen=dataclasses.replace(cfg.listen, address=Address("127.0.0.1", 0)),
            upstream=upstream,
            metrics=MetricsConfig(address=None),
        )
        proxy = Proxy(cfg, telemetry or Telemetry(None))
        bound = await nursery.start(proxy.serve)
        return RunningProxy(proxy, bound[0])

    return start


@pytest.fixture
async def proxy(proxy_factory: ProxyFactory) -> RunningProxy:
    return await proxy_factory()
