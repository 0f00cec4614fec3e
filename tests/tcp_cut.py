"""A loopback TCP relay whose link can be cut and healed: a network partition between one client and a server.

Cut, nothing moves either way and new connections are accepted but not put through, as when packets are dropped
(no reset: the client sees silence, then its own timeouts). Healed, what was held moves on. 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading

from captcha_fleet.contract.start_stop import DaemonLoop

CHUNK = 65536
TICK_S = 0.05


class CuttableLink(DaemonLoop):
    """Listens on 127.0.0.1:<port> and relays to ``target``; :meth:`cut` and :meth:`heal` switch the link."""

    join_timeout_s = 2.0

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.open = threading.Event()
        self.open.set()
        self.sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        super().__init__("cut-accept")

    def cut(self) -> None:
        """Drop everything from now on (held, not refused)."""
        self.open.clear()

    def heal(self) -> None:
        """Let it flow again."""
        self.open.set()

    def run(self) -> None:
        """Accept connections, each relayed by a thread of its own."""
        self.listener.settimeout(TICK_S * 4)
        while not self.stopping.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), name="cut-relay", daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        with self._lock:
            self.sockets.append(client)
        # A connection made during the cut waits, unanswered, until the link heals (or we close).
        while not self.open.wait(TICK_S):
            if self.stopping.is_set():
                client.close()
                return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        with self._lock:
            self.sockets.append(upstream)
        peers = {client: upstream, upstream: client}
        try:
            while not self.stopping.is_set():
                if not self.open.is_set():
                    self.open.wait(TICK_S)
                    continue
                readable, _, _ = select.select(list(peers), [], [], TICK_S)
                for sock in readable:
                    data = sock.recv(CHUNK)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except OSError:
            return
        finally:
            client.close()
            upstream.close()

    def wake(self) -> None:
        """Stop relaying: release a held link and close every socket."""
        self.open.set()
        self.listener.close()
        with self._lock:
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.close()
