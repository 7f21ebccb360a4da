"""Checking a Ray cluster's address before connecting: ray.init retries an unreachable head for a minute or more
and answers a wrong token with a traceback; this says either in one line within seconds.

Imports Ray only (no PyTorch), so `kpr ingest` can check the address before anything heavy loads.
"""
from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from typing import Iterator

import ray

from workers.errors import WorkerError

PROBE_TIMEOUT_S = 5.0  # a Ray head that has not answered by then is not there


def check_ray_address(address: str | None = None) -> None:
    """WorkerError, one line, within seconds, when the Ray cluster at ``address`` / ``RAY_ADDRESS`` does not answer or
    refuses this process's token (ray.init retries for a minute or more, then raises a traceback); nothing to check
    without an address (a local Ray is started) or with "auto" / "local"."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address in (None, "auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise WorkerError(f"Ray address {address!r} is not HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        raise WorkerError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc} (is its head running? "
                          f"check --ray-address / RAY_ADDRESS)") from None
    if address.startswith("ray://"):
        return  # a Ray Client server: only ray.init speaks its protocol
    from ray._raylet import GcsClient

    try:
        with _stderr_muted():  # Ray's C++ client logs the failure there as well
            GcsClient(address=f"{host}:{port}")
    except ray.exceptions.AuthenticationError:
        raise WorkerError(f"the Ray cluster at {address} refused this process's token: set RAY_AUTH_TOKEN, or "
                          f"RAY_AUTH_TOKEN_PATH to the cluster's token file") from None
    except ray.exceptions.RayError as exc:
        raise WorkerError(f"no Ray cluster answers at {address}: {str(exc).splitlines()[0][:200]}") from None


@contextmanager
def _stderr_muted() -> Iterator[None]:
    """Send what is written to file descriptor 2 (C++ libraries' logs too) to /dev/null while the block runs."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
