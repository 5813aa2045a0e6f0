"""Command line: `libvirt-snapshot-exporter [flags]`, node_exporter style.

Startup errors (bad flag, bad config file, address that cannot be bound) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import signal
import socket
import sys
import threading
from typing import TYPE_CHECKING, NoReturn

from . import __version__
from .config import OPTIONS, Config, ConfigError, OneLineParser, build, dest, external_url

if TYPE_CHECKING:
    from .model.operation import FinishedOperation
    from .verdict.recorder import FlightRecorder
    from .web.webconfig import WebConfig

PROG = "libvirt-snapshot-exporter"


def fail(message: str) -> NoReturn:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    sys.exit(2)


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog=PROG, description="Prometheus exporter timing libvirt snapshot operations "
        "beside the host's page cache and writeback.",
        epilog=f"{PROG} bench [flags]: the study as one command, snapshots of a guest timed "
        f"under load and judged (`{PROG} bench --help`, docs/bench.md).")
    p.add_argument("--config.file", dest="config_file", metavar="PATH",
                   help="YAML file whose keys are these flags' names without dashes")
    p.add_argument("--check-config", action="store_true",
                   help="validate the configuration, then exit (0: valid, 2: invalid)")
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    for option in OPTIONS:
        help_text = f"{option.help} (default: {option.default!r})"
        if option.type is bool:  # --key / --no-key, as kingpin's boolean flags
            p.add_argument(f"--{option.key}", dest=dest(option.key), default=None,
                           action=argparse.BooleanOptionalAction, help=help_text)
            continue
        p.add_argument(f"--{option.key}", dest=dest(option.key), type=option.type, default=None,
                       metavar=option.type.__name__.upper(), help=help_text)
    return p


def load(argv: list[str] | None = None) -> tuple[Config, argparse.Namespace]:
    args = parser().parse_args(argv)
    try:
        return build(vars(args), args.config_file), args
    except ConfigError as exc:
        fail(str(exc))


# glibc's mallopt parameters (malloc.h), for give_freed_memory_back
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 256 * 1024
ARENAS = 2


def give_freed_memory_back() -> None:
    """glibc's allocator told to give freed memory back to the host; set once at start, before
    the threads are.

    The exporter's large buffers come and go: each domain's exposition text, the families'
    joined blocks, every scrape's body (6 MB at 1,000 domains) and its gzip. glibc serves them
    from per-thread arenas, raising its mmap threshold to the largest block freed so far, and
    keeps what is freed for the next allocation: at 1,000 domains with history, malloc_trim(0)
    gave 45 MB back of the 131-136 MB the exporter held. Blocks of MMAP_THRESHOLD and more are
    mapped and unmapped on their own, and two arenas serve every thread (the exporter's own
    RSS 103-108 MB then). Without glibc (musl, another libc), nothing is changed."""
    libc = _glibc()
    if libc is None:
        return
    if not (libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and libc.mallopt(M_ARENA_MAX, ARENAS)):
        logging.getLogger(PROG).debug("mallopt refused: glibc's allocator left as it is")


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)  # the interpreter's own symbols, its C library's among them
        libc.gnu_get_libc_version  # noqa: B018 (glibc's own symbol: absent from musl)
    except (OSError, AttributeError, TypeError):
        return None
    return libc


class Exporter:
    """The exporter assembled: collection loop, operations log, HTTP server (bound already)."""

    def __init__(self, config: Config, web_config: WebConfig | None,
                 rate_seed: tuple[FinishedOperation, ...] = ()) -> None:
        from .exposition.renderer import MetricsRenderer
        from .loop.loop import CollectionLoop
        from .sources.host import HostReader
        from .store.oplog import OperationsLog, StateDirectoryInUse
        from .store.view import StateStore, View
        from .web.routes import App
        from .web.server import serve

        give_freed_memory_back()
        self.config = config
        host, port = config.listen
        try:
            oplog = OperationsLog(config["state.directory"], config["operations.log-size"])
        except StateDirectoryInUse as exc:
            fail(str(exc))
        store = StateStore(View.initial(config["libvirt.uri"]))
        url = external_url(config, web_config is not None and web_config.tls is not None,
                           socket.getfqdn())
        renderer = MetricsRenderer(store, url, config["collector.domain-histograms"],
                                   HostReader(config["path.procfs"]).read)
        recorder = _recorder(config)
        app = App(store, oplog, renderer.render, config["web.telemetry-path"], recorder)
        try:
            self.server = serve(app, host, port, web_config)
        except OSError as exc:
            fail(f"web.listen-address: cannot listen on {config['web.listen-address']}: "
                 f"{exc.strerror or exc}")
        self.loop = CollectionLoop(config, store, oplog, renderer.prepare, recorder, rate_seed)

    def serve(self) -> None:
        """Collect and serve until shutdown(); then stop collecting and flush the log."""
        self.loop.start()
        logging.getLogger(PROG).info(
            "listening on %s%s, libvirt %s", self.server.address_text,
            self.config["web.telemetry-path"], self.config["libvirt.uri"])
        self.server.serve_forever()
        self.server.server_close()
        self.loop.stop()

    def shutdown(self) -> None:
        threading.Thread(target=self.server.shutdown, daemon=True).start()


def build_app(argv: list[str]) -> Exporter:
    """The exporter from command-line flags, to serve in this process (benchmarks/scale.py)."""
    config, _ = load(argv)
    return Exporter(config, _web_config(config), _rate_seed(config))


def _recorder(config: Config) -> FlightRecorder | None:
    """The flight recorder and its traces beside the operations log; none for 0 traces."""
    from .store.trace_store import TraceStore
    from .verdict.recorder import FlightRecorder

    if not config["trace.operations"]:
        return None
    store = TraceStore(config["state.directory"], config["trace.operations"],
                       config["trace.max-bytes"])
    return FlightRecorder(config["path.procfs"], config["libvirt.pid-directory"], store)


def _rate_seed(config: Config) -> tuple[FinishedOperation, ...]:
    from .verdict.rate_seed import load_rate_seed

    path = config["verdict.rate-seed"]
    try:
        return load_rate_seed(path) if path else ()
    except ConfigError as exc:
        fail(str(exc))


def _web_config(config: Config) -> WebConfig | None:
    from .web.webconfig import load as load_web_config

    try:
        return load_web_config(config["web.config.file"])
    except ConfigError as exc:
        fail(str(exc))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        from .bench.command import main as bench_main

        sys.exit(bench_main(argv[1:]))
    config, args = load(argv)
    web_config = _web_config(config)
    rate_seed = _rate_seed(config)
    if args.check_config:
        print(f"{PROG}: configuration is valid")
        return
    logging.basicConfig(
        level=config["log.level"].upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    exporter = Exporter(config, web_config, rate_seed)
    stopping = threading.Event()

    def shutdown(signum: int, _frame: object) -> None:
        if not stopping.is_set():
            stopping.set()
            logging.getLogger(PROG).info("signal %d: shutting down", signum)
            exporter.shutdown()

    def hangup(signum: int, _frame: object) -> None:
        """Everything is read once at start: there is nothing to reload (and a closed
        terminal is no reason to stop)."""
        logging.getLogger(PROG).info("signal %d (SIGHUP): ignored, the configuration is read "
                                     "only at start: restart to change it", signum)

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    signal.signal(signal.SIGHUP, hangup)
    exporter.serve()
