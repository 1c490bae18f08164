"""Serving metrics over HTTP: one registry (``Exporter``, behind ``Metrics.serve``), or the
sum of several workers' multiprocess files (``serve_multiprocess``, the parent's /metrics).

prometheus_client's server runs in a daemon thread and answers any path; it only reads the
numbers (see hot_metrics.py for why that is safe).
"""

from __future__ import annotations

from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

__all__ = ["Exporter", "serve_multiprocess"]


class Exporter:
    """At most one HTTP server for ``registry``; ``stop`` closes it and allows another."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._server: WSGIServer | None = None

    def serve(self, host: str, port: int) -> None:
        """Serve the registry on host:port (path /metrics; any path answers) from a daemon
        thread. Port 0 picks a free port: read it from ``bound_port``."""
        if self._server is not None:
            raise RuntimeError("metrics exporter already running")
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server = server

    @property
    def bound_port(self) -> int:
        if self._server is None:
            raise RuntimeError("metrics exporter not running")
        return int(self._server.server_address[1])

    def stop(self) -> None:
        """Stop the server and close its socket (the daemon thread otherwise lives as long as
        the process; tests and a clean shutdown call this). Idempotent."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def serve_multiprocess(host: str, port: int, path: str) -> WSGIServer:
    """The parent of several workers: one /metrics summing every worker's files in ``path``
    (prometheus_client's multiprocess mode); the caller stops it with shutdown()."""
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
