"""prefect.yaml describes deployments that match the real flows (entrypoint, parameters, schedule)."""
from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest
import yaml
from prefect import Flow
from prefect.client.schemas.schedules import CronSchedule

ROOT = Path(__file__).resolve().parents[1]


def _load_flow(entrypoint: str) -> Flow:
    path, name = entrypoint.split(":")
    assert (ROOT / path).is_file()
    return getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)


EXPECTED_FLOWS = {"ingest-archive-nightly": "ingest-archive", "train-kpr-weekly": "train-kpr",
                  "benchmark-kpr-weekly": "benchmark-kpr"}


@pytest.mark.parametrize("name", sorted(EXPECTED_FLOWS))
def test_deployment_matches_its_flow(name):
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployment = {d["name"]: d for d in config["deployments"]}[name]
    flow = _load_flow(deployment["entrypoint"])
    assert isinstance(flow, Flow) and flow.name == EXPECTED_FLOWS[name]
    signature = inspect.signature(flow.fn)
    required = {n for n, p in signature.parameters.items() if p.default is inspect.Parameter.empty}
    assert set(deployment["parameters"]) <= set(signature.parameters)
    assert required <= set(deployment["parameters"])
    for schedule in deployment["schedules"]:
        CronSchedule(cron=schedule["cron"], timezone=schedule.get("timezone"))
    assert deployment["work_pool"]["name"]


def test_training_deployment_overrides_are_training_settings():
    from training.train_config import TrainConfig

    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployment = {d["name"]: d for d in config["deployments"]}["train-kpr-weekly"]
    TrainConfig.from_dict({"data_root": "d", "out": "o", **deployment["parameters"]["overrides"]})


def test_ingestion_deployment_runs_one_at_a_time_with_valid_parameters():
    from pipelines.flows import ingest_archive
    from workers.backends import BACKENDS

    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployment = {d["name"]: d for d in config["deployments"]}["ingest-archive-nightly"]
    assert deployment["concurrency_limit"]["limit"] == 1
    assert deployment["concurrency_limit"]["collision_strategy"] in ("ENQUEUE", "CANCEL_NEW")
    assert [s["active"] for s in deployment["schedules"]] == [True]
    parameters = deployment["parameters"]
    assert parameters["backend"] in BACKENDS
    validated = ingest_archive.validate_parameters(parameters)
    assert validated["detectors"] >= 1 and validated["embedders"] >= 1 and validated["segment_s"] > 0
    assert set(parameters) == set(inspect.signature(ingest_archive.fn).parameters)
