"""A small TCP proxy in front of the test server that can cut a connection mid-conversation.

``cut_on(marker)`` arms it: the next client message containing ``marker`` (e.g. ``b"COMMIT"``)
is still delivered to the server, then both sides of that connection are closed before the
server's reply can travel back. The server goes on and commits; the client sees a lost
connection — the "did my commit happen?" case, produced with a real server and real sockets.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo


def _upstream_address(server_url: str) -> tuple[int, Any]:
    params = conninfo_to_dict(server_url)
    host = str(params.get("host") or params.get("hostaddr") or "127.0.0.1")
    port = int(params.get("port") or 5432)
    if host.startswith("/"):
        return socket.AF_UNIX, f"{host}/.s.PGSQL.{port}"
    return socket.AF_INET, (host, port)


class CuttingProxy:
    """Listens on a loopback port and relays to the server; can cut one connection on cue."""

    def __init__(self, server_url: str) -> None:
        self._family, self._upstream = _upstream_address(server_url)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = int(self._listener.getsockname()[1])
        self._marker: bytes | None = None
        self._lock = threading.Lock()
        self.cuts = 0
        self._closing = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, direct_url: str) -> str:
        """``direct_url``'s database and credentials, through the proxy (no TLS)."""
        params = conninfo_to_dict(direct_url)
        params.update(host="127.0.0.1", port=str(self.port), sslmode="disable")
        params.pop("hostaddr", None)
        return make_conninfo("", **params)

    def cut_on(self, marker: bytes) -> None:
        """Cut the connection whose next client message contains ``marker``, after sending it."""
        with self._lock:
            self._marker = marker

    def _take_marker(self, chunk: bytes) -> bool:
        with self._lock:
            if self._marker is not None and self._marker in chunk:
                self._marker = None
                self.cuts += 1
                return True
            return False

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.socket(self._family, socket.SOCK_STREAM)
            server.connect(self._upstream)
            self._sockets += [client, server]
            threading.Thread(target=self._relay, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._relay, args=(server, client, False), daemon=True).start()

    def _relay(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while True:
                chunk = src.recv(65536)
                if not chunk:
                    break
                cut = from_client and self._take_marker(chunk)
                if cut:
                    # Stop the reply first, then let the server have the message and act on it.
                    client, server = src, dst
                    client.shutdown(socket.SHUT_RDWR)
                    client.close()
                    server.sendall(chunk)
                    time.sleep(0.5)
                    server.close()
                    return
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        """Stop listening and close every relayed connection."""
        self._closing = True
        self._listener.close()
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.close()


@pytest.fixture
def cutting_proxy(server_url: str) -> Iterator[CuttingProxy]:
    """A :class:`CuttingProxy` in front of the test server."""
    proxy = CuttingProxy(server_url)
    yield proxy
    proxy.close()
