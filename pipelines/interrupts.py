"""Ctrl-C during an ingestion: the first stops the work between two video commits, a second exits at once.

A terminal sends SIGINT to its whole foreground process group. Ray's local processes already
ignore it (Ray blocks SIGINT in every process it starts); Prefect's ephemeral API server does not,
so `kpr` starts that server itself with SIGINT blocked: it then outlives the Ctrl-C and the flow
can report how it stopped instead of waiting on a dead server.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from pipelines.errors import UserError

EXIT_INTERRUPTED = 130  # the shell's exit status of a command stopped by SIGINT


def start_prefect_server() -> Callable[[], None]:
    """Start Prefect's ephemeral API server now (when no PREFECT_API_URL is set) with SIGINT blocked in it, so a
    Ctrl-C in the terminal reaches `kpr` only; returns a call that kills that server (a no-op without one).

    Prefect's clients share the one server process this starts, as they would have started it themselves.
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return lambda: None
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # a child process inherits the mask
    try:
        server.start()
    except RuntimeError as exc:  # it did not answer in time
        raise UserError(f"{str(exc).splitlines()[0]} (a busy machine? raise PREFECT_SERVER_EPHEMERAL_STARTUP_"
                        f"TIMEOUT_SECONDS, or point PREFECT_API_URL at a running Prefect server)") from None
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def kill() -> None:
        if server.server_process is not None:
            server.server_process.kill()
    return kill


@contextmanager
def second_ctrl_c_exits(last_words: bytes, before_exit: Callable[[], None]) -> Iterator[None]:
    """While the block runs, the first Ctrl-C raises KeyboardInterrupt with logging muted (the caller prints one
    line once the work has stopped), a second writes ``last_words`` to stderr, calls ``before_exit`` and exits;
    after a first Ctrl-C that second one exits at once until the process ends (Ray and Prefect shut down at exit).

    Nothing changes where SIGINT is ignored (a command started with nohup or in the background) or off the
    main thread.
    """
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield
        return
    seen = []

    def on_sigint(signum: int, frame) -> None:
        if seen:
            os.write(2, last_words)
            before_exit()
            os._exit(EXIT_INTERRUPTED)
        seen.append(signum)
        logging.disable(logging.CRITICAL)  # Prefect's crash reports of the interrupted runs
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        if not seen:
            signal.signal(signal.SIGINT, previous)


@contextmanager
def commit_whole() -> Iterator[None]:
    """Hold a Ctrl-C that arrives while the block runs (a video's commit) and act on it right after, so that a
    video is never half written; off the main thread the block simply runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if held and callable(previous):
            previous(signal.SIGINT, held[0])
