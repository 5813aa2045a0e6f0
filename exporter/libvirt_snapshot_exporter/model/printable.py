"""Names from libvirt (domains, snapshots) and from files are anyone's input: written into the
exporter's log as they are, a newline in one would forge log lines of its choosing. They pass
through `printable` wherever they reach the log."""

from __future__ import annotations

import re

# C0 and C1 controls, DEL, the Unicode line and paragraph separators, and the backslash (so
# an escape in the log is never a name's own text)
UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\\\\]")


def printable(text: object) -> str:
    """The text on one line: each character above escaped as Python writes it in a string
    literal (a newline as \\n), everything else unchanged."""
    return UNPRINTABLE.sub(lambda found: repr(found[0])[1:-1], str(text))
