"""The port: reserved once by the supervisor, listened on by every worker (SO_REUSEPORT).

Why not one listening socket shared by every worker (uvicorn's ``--workers``)?  A worker
woken by new connections accepts all that are waiting, so a burst of keep-alive connections
(a load balancer's, a benchmark's) lands on one worker and stays there: measured here, 200
requests over 24 kept-alive connections to two workers were all served by one.  With
``SO_REUSEPORT`` each worker listens on a socket of its own and the kernel spreads new
connections over them by a hash of the connection's addresses.

The supervisor's socket is bound (so that a port in use fails at once, before any worker
starts, and the port stays this server's while workers restart) but never listens, so it
takes no connection itself: once every worker has closed its socket (draining), new
connections are refused at once rather than left waiting in a queue nobody reads.
"""

import dataclasses
import socket
from typing import Any


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Where the workers listen: the reserved socket's family and address (picklable)."""

    family: int
    address: Any  # (host, port) or (host, port, flowinfo, scope_id)

    @property
    def port(self) -> int:
        return int(self.address[1])


def reserve(host: str, port: int) -> socket.socket:
    """Binds ``host:port`` (port 0: a free one) without listening; ``OSError`` if in use."""
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    return listen_on(Endpoint(family, address))


def endpoint_of(reserved: socket.socket) -> Endpoint:
    return Endpoint(reserved.family, reserved.getsockname())


def listen_on(endpoint: Endpoint) -> socket.socket:
    """A worker's own socket on the reserved address, bound (uvicorn calls ``listen``)."""
    sock = _reusable(endpoint.family)
    try:
        sock.bind(endpoint.address)
    except OSError:
        sock.close()
        raise
    return sock


def _reusable(family: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return sock
