"""The ingestion deployment run the way operators run it: a Prefect server, a worker and a Ray head, all real.

`prefect server start` on loopback (its SQLite under tmp), `ray start --head` (token auth on, as
Ray 2.60 turns it on whenever ~/.ray/auth_token exists), the work pool and the deployment created
from prefect.yaml with the CLI, a run triggered with `prefect deployment run --param ...` and picked
up by `prefect worker start --run-once`; the flow run reaches the head through RAY_ADDRESS.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import httpx
import pytest
import yaml
from test_ingest_search import sampled_annotations

from storage import Store
from support import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEPLOYMENT = "ingest-archive-nightly"
START_TIMEOUT_S = 60
RUN_TIMEOUT_S = 120


def _ingest_deployment() -> dict:
    """The ingestion deployment's entry of prefect.yaml."""
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    return {d["name"]: d for d in config["deployments"]}[DEPLOYMENT]


def _stop_group(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, the process group that ``process`` leads (it was started in a new session).

    (`ray start --block` takes 15-30 s to exit on SIGTERM, so the grace period is short; `ray stop`
    is no option: it stops every Ray of the machine, other users' too.)
    """
    for sig, wait_s in ((signal.SIGTERM, 3), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait_s)
        except subprocess.TimeoutExpired:
            pass


def _pids_mentioning(text: str) -> list[int]:
    """Processes of this machine whose command line contains ``text``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _wait_for(ready, what: str, log: Path, timeout_s: float = START_TIMEOUT_S) -> None:
    """Poll ``ready()`` until true; fail with the tail of ``log`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not ready after {timeout_s} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


class Operator(NamedTuple):
    """What the test needs of the running services: the environment pointing at them, and the Ray head's folder."""

    env: dict
    ray_tmp: Path


@pytest.fixture
def operator(tmp_path) -> Iterator[Operator]:
    """A Prefect server and a Ray head on loopback, and the environment that points the CLI and worker at them.

    Both run in their own process groups, stopped in teardown whatever the test did; a Ray process
    still alive afterwards (an orphan) fails the test.
    """
    prefect_port, ray_port = free_port(), free_port()
    token = secrets.token_hex(16)
    # Ray's socket paths must stay under 107 bytes: a short folder, not pytest's tmp_path.
    ray_tmp = tempfile.mkdtemp(prefix="kpr-ray-", dir="/tmp")
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RAY_"))}
    env = {**inherited, "PREFECT_HOME": str(tmp_path / "prefect"),
           "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}",
           "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_LOGGING_LEVEL": "WARNING", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
           "RAY_ADDRESS": f"127.0.0.1:{ray_port}", "KPR_PROJECT_DIR": str(ROOT)}
    server_log, ray_log = tmp_path / "prefect-server.log", tmp_path / "ray-head.log"
    server = subprocess.Popen(
        [BIN / "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port), "--no-ui"],
        env=env, stdout=server_log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    # Ray 2.60 swaps a loopback --node-ip-address for the host's address (services.resolve_ip_for_localhost);
    # the driver still reaches the head on 127.0.0.1, and the token keeps other users out.
    head = subprocess.Popen(
        [BIN / "ray", "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(ray_port),
         "--num-cpus", "2", "--include-dashboard", "false", "--dashboard-port", str(free_port()),
         "--dashboard-agent-listen-port", str(free_port()), "--ray-client-server-port", str(free_port()),
         "--temp-dir", ray_tmp, "--disable-usage-stats"],
        env={k: v for k, v in env.items() if k != "RAY_ADDRESS"}, stdout=ray_log.open("w"),
        stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(lambda: "Ray runtime started" in ray_log.read_text() or head.poll() is not None, "ray head", ray_log)
        assert head.poll() is None, ray_log.read_text()[-3000:]
        _wait_for(lambda: _healthy(env["PREFECT_API_URL"]), "prefect server", server_log)
        yield Operator(env, Path(ray_tmp))
    finally:
        _stop_group(head)
        _stop_group(server)
        orphans = _pids_mentioning(ray_tmp)
        for pid in orphans:
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)
        assert not orphans, f"Ray processes outlived their head: {orphans}"


def _healthy(api_url: str) -> bool:
    """Whether the Prefect server at ``api_url`` answers its health check."""
    try:
        return httpx.get(f"{api_url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _prefect(env: dict, *args: str, timeout_s: float = 60) -> str:
    """Run one `prefect` CLI command in the repository (as an operator would); its output, or a failure with it."""
    done = subprocess.run([BIN / "prefect", "--no-prompt", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout_s)
    assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _run_worker_once(env: dict, pool: str, log: Path) -> None:
    """`prefect worker start --run-once`: picks up the due flow runs of ``pool`` and returns when they end."""
    worker = subprocess.Popen([BIN / "prefect", "worker", "start", "--pool", pool, "--run-once"], cwd=ROOT, env=env,
                              stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        worker.wait(RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the worker did not finish the run in {RUN_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")
    finally:
        _stop_group(worker)


@pytest.mark.skipif(not (BIN / "prefect").exists() or not (BIN / "ray").exists(),
                    reason=f"needs the prefect and ray command line tools beside {sys.executable}")
def test_deployment_from_prefect_yaml_ingests_through_a_worker_and_a_ray_head(
        operator, small_archive, tiny_checkpoint, tmp_path):
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    deployment = _ingest_deployment()
    pool = deployment["work_pool"]["name"]
    db = tmp_path / "db"
    _prefect(operator.env, "work-pool", "create", pool, "--type", "process")
    _prefect(operator.env, "deploy", "--name", DEPLOYMENT)
    params = {"inputs": json.dumps({"archive": str(small_archive), "db": str(db), "model": str(tiny_checkpoint)}),
              "options": json.dumps({"backend": {"name": "annotations"}, "segment_s": 2.0}), "progress": "false"}
    out = _prefect(operator.env, "deployment", "run", f"ingest-archive/{DEPLOYMENT}",
                   *[arg for name, value in params.items() for arg in ("--param", f"{name}={value}")])
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)
    worker_log = tmp_path / "worker.log"
    _run_worker_once(operator.env, pool, worker_log)

    with SyncPrefectClient(operator.env["PREFECT_API_URL"]) as client:
        run = client.read_flow_run(flow_run_id)
        assert run.state.is_completed(), f"{run.state}\n{worker_log.read_text()[-3000:]}"
        created = client.read_deployment_by_name(f"ingest-archive/{DEPLOYMENT}")
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
    assert created.global_concurrency_limit.limit == 1 and created.schedules and created.work_pool_name == pool
    assert not any(schedule.active for schedule in created.schedules)  # off until an operator sets real paths
    # the project folder comes from each worker's environment when a run starts, not from the deploying machine
    assert created.pull_steps == yaml.safe_load((ROOT / "prefect.yaml").read_text())["pull"]
    assert str(ROOT) not in json.dumps(created.pull_steps)

    store = Store.open(str(db), create=False)
    videos = sorted(small_archive.rglob("*.mp4"))
    detections, tracklets = sampled_annotations(small_archive, 5.0)
    assert store.count_videos(status="done") == len(videos) and store.count_videos(status="failed") == 0
    assert store.count_detections() == detections and store.count_tracklets() == tracklets
    report = {a.key: a for a in artifacts}["ingest-report"]
    assert report.type == "markdown"
    assert f"| {len(videos)} | 0 | {len(videos)} | 0 | {detections} | {tracklets} |" in report.data
    assert (tmp_path / "prefect.db").is_file()
    session_logs = next(operator.ray_tmp.glob("session_2*/logs"))
    assert list(session_logs.glob("python-core-driver-*")), "the flow run never connected to the Ray head"


@pytest.mark.skipif(not (BIN / "ray").exists(), reason=f"needs the ray command line tool beside {sys.executable}")
def test_a_wrong_ray_token_is_one_line_in_seconds(operator, small_archive, tiny_checkpoint, tmp_path):
    env = {**operator.env, "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    started = time.monotonic()
    done = subprocess.run([BIN / "kpr", "ingest", str(small_archive), "--db", str(tmp_path / "db"), "--model",
                           str(tiny_checkpoint)], env=env, capture_output=True, text=True, timeout=60)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(err) == 1, done.stderr
    assert err[0] == (f"kpr ingest: error: the Ray cluster at {env['RAY_ADDRESS']} refused this process's token: "
                      f"set RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH to the cluster's token file")
    assert time.monotonic() - started < 30 and not (tmp_path / "db").exists()  # ray.init alone: 20 s, a traceback
