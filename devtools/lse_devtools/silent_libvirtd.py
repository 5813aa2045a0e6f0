"""A libvirtd that hangs: a unix socket that accepts connections and never answers."""

from __future__ import annotations

import socket
import threading
from pathlib import Path


class SilentLibvirtd(threading.Thread):
    """A unix socket that accepts connections and never answers, as a hung libvirtd does."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(str(path))
        self.server.listen(16)
        self.accepted: list[socket.socket] = []

    def run(self) -> None:
        while True:
            try:
                self.accepted.append(self.server.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.server.close()
        for conn in self.accepted:
            conn.close()
