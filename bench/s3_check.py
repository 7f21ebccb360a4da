"""Object storage end to end: two `kpr ingest` runs at once into an s3:// store on a local S3 server, then a search.

The server is moto's S3 in server mode (a registry package, `pip install 'moto[server]'`), on a free
loopback port; the store is reached only through the AWS_* environment variables that LanceDB reads,
as on a real S3-compatible service. `s3_check()` returns "ok" or one line saying what failed.
Example, from the repository root:
    .venv/bin/python -m bench.s3_check
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import bench.reliability as rel
from storage import Store

BUCKET = "kpr"
# A region is required by S3-compatible servers' signatures; moto accepts any key pair.
_REGION = "us-east-1"


@contextmanager
def _atomic_conditional_puts() -> Iterator[None]:
    """Make moto's conditional PutObject atomic, as S3's is, while the context lasts.

    Lance commits version N by a PUT of its manifest with If-None-Match: *, which S3 lets only one of
    two writers win. Moto checks that header and then stores the object without a lock, so two
    racing PUTs can both succeed and one commit silently replaces the other (measured: 2 of 200
    racing appends lost); serialising conditional PUTs gives S3's guarantee.
    """
    from moto.s3.responses import S3Response

    plain = S3Response.put_object
    lock = threading.Lock()

    def put_object(response: S3Response):
        if "If-None-Match" not in response.headers and "If-Match" not in response.headers:
            return plain(response)
        with lock:
            return plain(response)

    S3Response.put_object = put_object
    try:
        yield
    finally:
        S3Response.put_object = plain


@contextmanager
def moto_s3(bucket: str = BUCKET) -> Iterator[dict[str, str]]:
    """A moto S3 server on a loopback port holding ``bucket``; yields its AWS_* variables, set in os.environ meanwhile.

    Raises ImportError when moto's server mode is not installed.
    """
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    with _atomic_conditional_puts():
        server.start()
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        variables = {"AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true", "AWS_REGION": _REGION,
                     "AWS_ACCESS_KEY_ID": "moto", "AWS_SECRET_ACCESS_KEY": "moto"}
        saved = {name: os.environ.get(name) for name in variables}
        try:
            boto3.client("s3", endpoint_url=endpoint, region_name=_REGION, aws_access_key_id="moto",
                         aws_secret_access_key="moto").create_bucket(Bucket=bucket)
            os.environ.update(variables)
            yield variables
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            server.stop()


def ingest_twice_at_once(archive: Path, model: Path, db: str, logs: Path) -> dict:
    """Run two `kpr ingest` of ``archive`` into ``db`` at the same time; their exit codes and how the store compares."""
    ingests = [rel.Ingest(archive, db, model, logs / f"s3_ingest.{i}.log") for i in range(2)]
    codes = [ingest.wait() for ingest in ingests]
    report = rel.compare(rel.expected_snapshot(archive, model), rel.store_snapshot(db))
    return {"exit_codes": codes, "outputs": [ingest.output for ingest in ingests], **report}


def first_detection(db: str) -> str:
    """The id of one detection of the store at ``db`` (a search query)."""
    return Store.open(db, create=False).list_detections(None, limit=1)["detection_id"][0].as_py()


def _failure(report: dict) -> str | None:
    """One line saying how a concurrent-ingest report misses exactly-once, or None when it holds."""
    if report["exit_codes"] != [0, 0]:
        last = [out.strip().splitlines()[-1:] for out in report["outputs"]]
        return f"kpr ingest exited with {report['exit_codes']}: {last}"
    if not rel.exactly_once(report):
        counts = {key: value for key, value in report.items() if key not in ("exit_codes", "outputs")}
        return "two concurrent ingests are not exactly once: " + ", ".join(f"{k}={v}" for k, v in counts.items())
    return None


def s3_check(workdir: Path | None = None) -> str:
    """"ok" when two concurrent ingests into a fresh s3:// store hold every detection once and `kpr search` answers."""
    try:
        import moto.server  # noqa: F401  (moto_s3 starts it)
    except ImportError as exc:
        return f"moto's S3 server is not installed ({exc.name}): pip install 'moto[server]'"
    with moto_s3(), tempfile.TemporaryDirectory(dir=workdir, prefix="kpr-s3-") as folder:
        work = Path(folder)
        archive = rel.synth_archive(work / "archive", seeds=(3,))
        model = rel.tiny_checkpoint(work / "model")
        db = f"s3://{BUCKET}/store"
        failure = _failure(ingest_twice_at_once(archive, model, db, work))
        if failure:
            return failure
        query = ["search", "--db", db, "--detection", first_detection(db), "-k", "3"]
        search = subprocess.run([str(rel.KPR_CLI), *query], capture_output=True, text=True)
        if search.returncode != 0 or "no results" in search.stdout or not search.stdout.strip():
            return f"kpr search on {db} found nothing ({search.returncode}): {search.stderr.strip()[-200:]}"
        return "ok"


if __name__ == "__main__":
    outcome = s3_check()
    print(outcome)
    sys.exit(0 if outcome == "ok" else 1)
