"""``uvicorn`` with its multi-worker Nagle bug worked around: ``python -m bench.uvicorn_nodelay``
takes uvicorn's command-line arguments.

With ``--workers N`` uvicorn binds the listening socket itself with ``proto`` 0; accepted
sockets inherit it and asyncio enables TCP_NODELAY only when ``proto == IPPROTO_TCP``, so
every keep-alive response after the first waits ~40 ms for the client's delayed ACK
(uvicorn issue #3149, fix proposed in PR #3155). The benchmark would measure that, not
database connections, so this launcher gives the listening socket its real protocol.
"""

import socket

import uvicorn.config
import uvicorn.main

_bind_socket = uvicorn.config.Config.bind_socket


def bind_socket(self):
    sock = _bind_socket(self)
    if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.proto == 0:
        sock = socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
    return sock


uvicorn.config.Config.bind_socket = bind_socket

if __name__ == "__main__":
    uvicorn.main.main()
