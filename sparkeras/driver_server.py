"""A small TCP server on the driver that a fit's Spark tasks connect to with the fit's secret.

Live progress (``progress.ProgressServer``) and the tasks' rendezvous
(``rendezvous.RendezvousServer``) both run one for the length of a fit. The secret travels only
inside the Spark task closure; every connection must send it as its first line, within
:data:`SECRET_SECONDS`, or it is closed unread. Each authenticated connection is served on a
thread of its own; closing the server closes them too, so no thread outlives its fit blocked on
a task that never hangs up.
"""

from __future__ import annotations

import contextlib
import hmac
import secrets
import socket
import threading
from typing import BinaryIO

#: Seconds a new connection has to send the secret (a silent one holds no thread for long).
SECRET_SECONDS = 5.0


class SecretServer:
    """Accepts connections that start with the secret and hands each to :meth:`_serve`.

    Subclasses set their own state before calling ``super().__init__``, which starts accepting.

    Examples
    --------
    >>> class Echo(SecretServer):  # doctest: +SKIP
    ...     def _serve(self, connection, stream):
    ...         connection.sendall(stream.readline())
    >>> with Echo("localhost") as server:  # doctest: +SKIP
    ...     address, secret = server.address, server.secret
    """

    #: Name of the accepting thread.
    thread_name = "sparkeras-driver-server"

    def __init__(self, host: str) -> None:
        self.secret = secrets.token_hex(16)
        self._listener = socket.create_server(("", 0))
        self.address = f"{host}:{self._listener.getsockname()[1]}"
        self._closed = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        threading.Thread(target=self._accept, name=self.thread_name, daemon=True).start()

    def __enter__(self) -> SecretServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop accepting connections and end the open ones (``shutdown`` wakes the threads
        blocked on them)."""
        self._closed.set()
        with self._connections_lock:
            sockets = [self._listener, *self._connections]
        for open_socket in sockets:
            with contextlib.suppress(OSError):
                open_socket.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._listener.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._authenticate, args=(connection,), daemon=True).start()

    def _authenticate(self, connection: socket.socket) -> None:
        with self._connections_lock:
            if self._closed.is_set():
                connection.close()
                return
            self._connections.add(connection)
        try:
            self._read_secret_and_serve(connection)
        finally:
            with self._connections_lock:
                self._connections.discard(connection)

    def _read_secret_and_serve(self, connection: socket.socket) -> None:
        with connection, connection.makefile("rb") as stream:
            try:
                connection.settimeout(SECRET_SECONDS)
                secret = stream.readline(len(self.secret) + 2).strip()
                connection.settimeout(None)
            except OSError:
                return
            if hmac.compare_digest(secret, self.secret.encode()):
                self._serve(connection, stream)

    def _serve(self, connection: socket.socket, stream: BinaryIO) -> None:
        """Serve one authenticated connection; ``stream`` reads what follows the secret."""
        raise NotImplementedError
