"""glibc's allocator told to give memory back (cli.give_freed_memory_back), tried in a Python
process of its own: the setting is process-wide. What it gives back is measured by
benchmarks/scale.py."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_glibc_is_told_to_give_memory_back():
    out = _run("""
        from libvirt_snapshot_exporter import cli
        cli.give_freed_memory_back()
        print(cli._glibc() is not None)
    """)
    assert out == "True"  # Debian's Python runs on glibc
