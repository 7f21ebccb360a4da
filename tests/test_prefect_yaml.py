"""prefect.yaml describes deployments that match the real flows (entrypoint, parameters, schedule)."""
from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import yaml
from prefect import Flow
from prefect.client.schemas.schedules import CronSchedule

ROOT = Path(__file__).resolve().parents[1]


def _load_flow(entrypoint: str) -> Flow:
    path, name = entrypoint.split(":")
    assert (ROOT / path).is_file()
    return getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)


def test_ingestion_deployment_matches_its_flow():
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in config["deployments"]}
    ingest = deployments["ingest-archive-nightly"]
    flow = _load_flow(ingest["entrypoint"])
    assert isinstance(flow, Flow) and flow.name == "ingest-archive"
    signature = inspect.signature(flow.fn)
    required = {n for n, p in signature.parameters.items() if p.default is inspect.Parameter.empty}
    assert set(ingest["parameters"]) <= set(signature.parameters)
    assert required <= set(ingest["parameters"])
    for schedule in ingest["schedules"]:
        CronSchedule(cron=schedule["cron"], timezone=schedule.get("timezone"))
    assert ingest["work_pool"]["name"]
