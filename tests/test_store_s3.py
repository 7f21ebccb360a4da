"""A store on object storage: `kpr ingest` twice at once, search, maintain and serve with --db s3://bucket/path.

The S3 service is moto's server mode on a loopback port (bench.s3_check.moto_s3); every command reaches
it only through the AWS_* environment variables, as it would reach a real S3-compatible service.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from bench import reliability as rel
from bench import s3_check
from pipelines.cli import main
from support import free_port
from test_web_e2e import _wait_until_up

pytestmark = pytest.mark.integration

DB = "s3://kpr/archive-store"


@pytest.fixture(scope="module")
def s3_server():
    """A local S3 server (moto) with the test bucket, reached through the AWS_* variables it sets meanwhile."""
    pytest.importorskip("moto.server", reason="moto's S3 server is not installed (pip install 'moto[server]')")
    with s3_check.moto_s3() as variables:
        yield variables


@pytest.fixture(scope="module")
def s3_ingested(s3_server, small_archive, tiny_checkpoint, tmp_path_factory):
    """Two `kpr ingest` runs of the small archive at once into a fresh s3:// store; their report."""
    return s3_check.ingest_twice_at_once(small_archive, tiny_checkpoint, DB, tmp_path_factory.mktemp("s3_logs"))


def test_two_ingests_at_once_store_every_detection_once(s3_ingested):
    assert s3_ingested["exit_codes"] == [0, 0], "\n---\n".join(s3_ingested["outputs"])  # whole, not truncated
    assert not any("Traceback" in out for out in s3_ingested["outputs"]), s3_ingested["outputs"]
    assert rel.exactly_once(s3_ingested), {k: v for k, v in s3_ingested.items() if k != "outputs"}
    assert s3_ingested["rows"] == s3_ingested["expected_rows"] > 0


def test_search_and_maintain_through_the_cli(s3_ingested, capsys):
    query = s3_check.first_detection(DB)
    assert main(["search", "--db", DB, "--detection", query, "-k", "5"]) == 0
    before = capsys.readouterr().out
    assert len(before.strip().splitlines()) > 2, before
    assert main(["maintain", "--db", DB]) == 0
    assert "detections" in capsys.readouterr().out
    assert main(["search", "--db", DB, "--detection", query, "-k", "5"]) == 0
    assert capsys.readouterr().out == before


def test_serve_answers_a_search(s3_ingested):
    kpr = Path(sys.executable).with_name("kpr")
    port = free_port()
    process = subprocess.Popen([str(kpr), "serve", "--db", DB, "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_until_up(process, port)
        form = urllib.parse.urlencode({"detection_id": s3_check.first_detection(DB), "k": 5,
                                       "detections": "true"}).encode()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/search", data=form, timeout=60) as answer:
            found = json.load(answer)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    assert found["count"] == len(found["hits"]) == 5, found


@pytest.mark.parametrize("db, variable, expected", [
    ("s3://no-such-bucket/store", None, "the object store answered NoSuchBucket: The specified bucket does not exist"),
    (DB, ("AWS_ALLOW_HTTP", "false"), "the endpoint is plain http: set AWS_ALLOW_HTTP=true to allow it"),
])
def test_object_store_mistakes_are_one_clear_line(s3_server, monkeypatch, capsys, db, variable, expected):
    if variable:
        monkeypatch.setenv(*variable)
    assert main(["search", "--db", db, "--detection", "v:0000001:000"]) == 2
    assert capsys.readouterr().err == f"kpr search: error: cannot open store at {db}: {expected}\n"
