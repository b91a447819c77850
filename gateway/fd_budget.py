"""How many connections a process may hold: its open-files limit, shared out.

A process that runs out of file descriptors cannot accept, open a model file
or reach a vendor: every request fails. The HTTP and gRPC servers each cap
their connections (`server.http.max_connections`,
`server.grpc.max_connections`); unset, the caps come from here.
"""

from __future__ import annotations

import sys

# File descriptors kept for everything but client connections: model files,
# vendor and Redis connections, logs, pipes, the event loop's own.
FD_RESERVE_MIN = 128
# The most client connections the automatic limit allows one process, whatever
# its open-files limit: an idle HTTP connection holds ~7-11 KB of the process's
# memory (measured: 5,000 of them) besides kernel socket buffers, so this many
# hold well under 1 GB; and one process serves ~10,000 requests/s.
AUTO_CONNECTIONS_CEILING = 65_536


def open_files_limit() -> int:
    """This process's soft RLIMIT_NOFILE (1024 where it cannot be read)."""
    if sys.platform == "win32":  # pragma: no cover - the gateway serves from Linux and macOS
        return 1024
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1024 if soft == resource.RLIM_INFINITY else soft


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard one, as Go's runtime does (the
    soft 1024 of most service managers dates from select()). Returns (before, after);
    worker processes inherit it."""
    before = open_files_limit()
    if sys.platform == "win32":  # pragma: no cover
        return before, before
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):  # e.g. macOS refuses a hard limit past OPEN_MAX
            return before, before
    return before, open_files_limit()


def connection_budget(grpc: bool, nofile: int | None = None) -> tuple[int, int]:
    """The automatic (HTTP, gRPC) connection limits of one process: its open-files
    limit less a reserve (an eighth, at least FD_RESERVE_MIN), three quarters of
    it for HTTP/1.1 (one connection per concurrent request) and a quarter for
    gRPC (HTTP/2: clients multiplex calls over few connections), each at most
    AUTO_CONNECTIONS_CEILING. Without gRPC, HTTP has it all."""
    limit = open_files_limit() if nofile is None else nofile
    usable = max(2, limit - max(FD_RESERVE_MIN, limit // 8))
    http = usable * 3 // 4 if grpc else usable
    return min(http, AUTO_CONNECTIONS_CEILING), min(usable - http, AUTO_CONNECTIONS_CEILING)
