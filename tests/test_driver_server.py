"""The driver's TCP server that a fit's tasks connect to (``sparkeras.driver_server``)."""

from __future__ import annotations

import socket
import threading

from sparkeras.driver_server import SecretServer


class _Blocking(SecretServer):
    """Serves each connection by reading until the task hangs up, as progress streams do."""

    def __init__(self) -> None:
        self.served: list[threading.Thread] = []
        self.finished = threading.Event()
        super().__init__("localhost")

    def _serve(self, connection, stream):
        self.served.append(threading.current_thread())
        while stream.readline():
            pass
        self.finished.set()


def _connect(server: SecretServer) -> socket.socket:
    host, port = server.address.rsplit(":", 1)
    client = socket.create_connection((host, int(port)))
    client.sendall(server.secret.encode() + b"\n")
    return client


def test_closing_the_server_ends_the_connections_it_serves():
    """Not only the accepting thread: a task that never hangs up must not hold a driver thread
    (and its socket) after the fit."""
    server = _Blocking()
    client = _connect(server)
    client.sendall(b"progress\n")
    for _ in range(100):
        if server.served:
            break
        threading.Event().wait(0.05)
    assert server.served and not server.finished.is_set()
    server.close()
    assert server.finished.wait(5)
    server.served[0].join(5)
    assert not server.served[0].is_alive()
    client.settimeout(5)
    assert client.recv(1) == b""  # the task sees the driver hang up
    client.close()


def test_a_wrong_secret_is_not_served():
    server = _Blocking()
    host, port = server.address.rsplit(":", 1)
    with socket.create_connection((host, int(port))) as client:
        client.sendall(b"0" * len(server.secret) + b"\n")
        client.settimeout(5)
        assert client.recv(1) == b""
    assert not server.served
    server.close()
