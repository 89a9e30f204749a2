"""A loopback TCP proxy whose existing connections can be stalled, like a dead network."""

from __future__ import annotations

import socket
import threading


class StallingProxy:
    """Forward 127.0.0.1:<port> to a server; ``stall()`` freezes the current connections."""

    def __init__(self, target_port: int, port: int = 0) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", port))
        self.port = self.listener.getsockname()[1]
        self._stalled: list[threading.Event] = []
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            stalled = threading.Event()
            with self._lock:
                self._stalled.append(stalled)
                self._sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b, stalled), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket, stalled: threading.Event) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if not stalled.is_set():  # a stalled link swallows bytes, never closes
                    sink.sendall(data)
        except OSError:
            pass
        finally:
            if not stalled.is_set():
                for end in (source, sink):
                    try:
                        end.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

    def stall(self) -> None:
        """Existing connections stop delivering bytes either way; new ones work."""
        with self._lock:
            for stalled in self._stalled:
                stalled.set()

    def close(self) -> None:
        """Stop listening and drop every link (the server sessions end with them)."""
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked on it
        except OSError:
            pass
        self.listener.close()
        with self._lock:
            for end in self._sockets:
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                end.close()
