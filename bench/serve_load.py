"""Bounded loopback load on the real `kpr serve`: throughput, p50/p95/p99 latency and errors of concurrent searches.

Serves --db (or a store it builds once with the real CLI: `kpr synth` + a seeded random demo-size
checkpoint + `kpr ingest`), then --concurrency client threads, each on its own keep-alive connection,
send --requests searches in all (detection queries; every other one also filtered to one camera and
a time window). Merges the serve_* keys into bench/results/search.json. See bench/README.md. Example,
from the repository root:
    .venv/bin/python -m bench.serve_load --concurrency 16 --requests 800
"""
from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlencode

import numpy as np

from bench.results_io import RESULTS, command_line, merge_result

KPR_CLI = Path(sys.executable).with_name("kpr")
START_TIMEOUT_S = 180.0


def log(message: str) -> None:
    """Progress on stderr."""
    print(f"[serve_load] {message}", file=sys.stderr, flush=True)


def build_store(workdir: Path, identities: int, cameras: int, duration_s: float) -> tuple[Path, Path]:
    """A store of a synthetic archive ingested with the real CLI and a seeded random demo-size KPR (once per workdir)."""
    db, model, archive = workdir / "db", workdir / "model", workdir / "archive"
    if (db / "done").is_file():
        log(f"reusing the store at {db}")
        return db, model
    import torch

    from kpr_model.checkpoint import save_checkpoint
    from kpr_model.config import KPRConfig
    from kpr_model.model import KPR

    torch.manual_seed(0)
    save_checkpoint(KPR(KPRConfig.demo()).eval(), KPRConfig.demo(), model)
    subprocess.run([str(KPR_CLI), "synth", str(archive), "--identities", str(identities), "--cameras", str(cameras),
                    "--duration", str(duration_s)], check=True)
    started = time.perf_counter()
    subprocess.run([str(KPR_CLI), "ingest", str(archive), "--db", str(db), "--model", str(model), "--no-progress"], check=True)
    log(f"ingested in {time.perf_counter() - started:.0f} s")
    (db / "done").write_text("built by bench/serve_load.py\n")
    return db, model


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Client:
    """One keep-alive HTTP connection to the server (one per load thread)."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def request(self, method: str, path: str, body: str | None = None) -> tuple[int, bytes]:
        """Send one request and read the whole answer; reconnects once if the server closed the connection."""
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if body is not None else {}
        for attempt in (0, 1):
            try:
                self.connection.request(method, path, body=body, headers=headers)
                answer = self.connection.getresponse()
                return answer.status, answer.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.connection.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def get_json(self, path: str) -> dict:
        """GET ``path`` and parse its JSON (raising on a non-200 answer)."""
        status, body = self.request("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {body[:200]!r}")
        return json.loads(body)


def wait_until_up(process: subprocess.Popen, port: int) -> None:
    """Poll /api/info until the server answers (or fail with the server's exit status)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"kpr serve exited with status {process.returncode}")
        try:
            Client(port).get_json("/api/info")
            return
        except (OSError, RuntimeError):
            time.sleep(0.5)
    raise SystemExit(f"kpr serve did not answer within {START_TIMEOUT_S:.0f} s")


def query_bodies(port: int, count: int, k: int, seed: int) -> list[str]:
    """``count`` search forms over detections picked at random from the store (every other one filtered): the best
    detections of ten pages of tracklets that the page's picker lists, at random places in its list."""
    client = Client(port)
    info = client.get_json("/api/info")
    rng = np.random.default_rng(seed)
    total = client.get_json("/api/tracklets?limit=1")["total"]
    ids = []
    for offset in sorted({int(o) for o in rng.integers(0, max(total - 200, 1), 10)}):
        page = client.get_json(f"/api/tracklets?limit=200&offset={offset}")
        ids += [t["best_detection_id"] for t in page["tracklets"] if t["best_detection_id"]]
    start, end = info["time_range"]
    bodies = []
    for n in range(count):
        form: list[tuple[str, str]] = [("detection_id", ids[rng.integers(len(ids))]), ("k", str(k))]
        if n % 2:
            since = start + rng.uniform(0.0, 0.5) * (end - start)
            form += [("cameras", info["cameras"][rng.integers(len(info["cameras"]))]),
                     ("since", f"{since:.3f}"), ("until", f"{since + 0.5 * (end - start):.3f}")]
        bodies.append(urlencode(form))
    return bodies


def run_load(port: int, bodies: list[str], concurrency: int) -> tuple[np.ndarray, list[str], float]:
    """Send ``bodies`` from ``concurrency`` threads; per-request latencies (ms), error lines, wall seconds."""
    shares = [bodies[i::concurrency] for i in range(concurrency)]

    def worker(share: list[str]) -> tuple[list[float], list[str]]:
        client, times, errors = Client(port), [], []
        for body in share:
            started = time.perf_counter()
            try:
                status, answer = client.request("POST", "/api/search", body)
                if status != 200:
                    errors.append(f"{status}: {answer[:200]!r}")
            except OSError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
            times.append(1000.0 * (time.perf_counter() - started))
        return times, errors

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(worker, shares))
    wall = time.perf_counter() - started
    return np.array([t for times, _ in results for t in times]), [e for _, errors in results for e in errors], wall


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", type=Path, help="store to serve (default: build one under --workdir)")
    parser.add_argument("--model", type=Path, help="the store's model, passed to kpr serve (optional with --db)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/kpr_serve_bench"),
                        help="where the built store lives (reused on later runs)")
    parser.add_argument("--identities", type=int, default=24, help="synthetic identities of the built store")
    parser.add_argument("--cameras", type=int, default=4, help="cameras of the built store")
    parser.add_argument("--duration", type=float, default=40.0, help="seconds of video per camera of the built store")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent client threads")
    parser.add_argument("--requests", type=int, default=800, help="timed requests in all")
    parser.add_argument("--warmup", type=int, default=32, help="untimed requests first")
    parser.add_argument("-k", type=int, default=20, help="results per search")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=RESULTS / "search.json", help="JSON to merge the serve_* keys into ('-': print only)")
    args = parser.parse_args(argv)
    if min(args.concurrency, args.requests, args.k) < 1 or args.warmup < 0:
        parser.error("--concurrency, --requests and -k must be >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    """Serve the store, load it, print and store the figures; exit 1 when any request failed."""
    args = parse_args(argv)
    db, model = (args.db, args.model) if args.db else build_store(args.workdir, args.identities, args.cameras, args.duration)
    port = free_port()
    command = [str(KPR_CLI), "serve", "--db", str(db), "--port", str(port), *(["--model", str(model)] if model else [])]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        wait_until_up(server, port)
        rows = Client(port).get_json("/api/info")["detections"]
        bodies = query_bodies(port, args.warmup + args.requests, args.k, args.seed)
        log(f"serving {rows} detections; {args.warmup} warm-up then {args.requests} requests from {args.concurrency} clients")
        run_load(port, bodies[: args.warmup], args.concurrency)
        latencies, errors, wall = run_load(port, bodies[args.warmup:], args.concurrency)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    for line in errors[:5]:
        log(f"error: {line}")
    result = {
        "serve_qps": round(len(latencies) / wall, 1),
        "serve_p50_ms": round(float(np.percentile(latencies, 50)), 1),
        "serve_p95_ms": round(float(np.percentile(latencies, 95)), 1),
        "serve_p99_ms": round(float(np.percentile(latencies, 99)), 1),
        "serve_errors": len(errors),
        "serve_requests": len(latencies),
        "serve_concurrency": args.concurrency,
        "serve_k": args.k,
        "serve_rows": rows,
        "serve_query_mix": "detection queries; every other one filtered to one camera and half the time range",
        "serve_cores": len(os.sched_getaffinity(0)),
        "serve_measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "serve_command": command_line("bench.serve_load", argv),
    }
    merge_result(args.output, result)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
