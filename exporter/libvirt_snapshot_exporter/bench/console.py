"""What bench shows and hears on the terminal: Ctrl-C (or SIGTERM) once and twice, and the
progress line."""

from __future__ import annotations

import signal
import sys

from .cache_mode import SAVING, STARTING
from .checks import PROG


class Abandoned(BaseException):
    """A second Ctrl-C: leave now, without cleaning up (a BaseException, like
    KeyboardInterrupt, so that no cleanup-on-error handler catches it)."""


class Interrupts:
    """Ctrl-C (or SIGTERM) once: finish the call in flight, then clean up. Twice: leave."""

    def __init__(self) -> None:
        self.count = 0
        self.doing = ""  # what is in flight, for the message

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, _signum: int, _frame: object) -> None:
        self.count += 1
        if self.count > 1:
            return
        if self.doing.startswith("create internal"):
            what = (f"an internal snapshot create cannot be aborted: waiting for "
                    f"{self.doing.split()[-1]} to finish, then deleting")
        elif self.doing.startswith("create"):
            what = f"waiting for the create of {self.doing.split()[-1]} to finish, then deleting"
        elif self.doing.startswith((SAVING, STARTING)):
            what = f"waiting for {self.doing} to finish, then deleting"
        else:
            what = "deleting"
        print(f"\n{PROG}: interrupted: {what} the snapshots made so far and putting the domain "
              "back as found (Ctrl-C again to leave without cleaning up)", file=sys.stderr,
              flush=True)


class Progress:
    """One status line rewritten in place, only when stdout is a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def show(self, text: str) -> None:
        if self.enabled:
            sys.stdout.write("\r\033[K" + text)
            sys.stdout.flush()

    def line(self, text: str) -> None:
        if self.enabled:
            sys.stdout.write("\r\033[K" + text + "\n")
            sys.stdout.flush()
