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
                  "benchmark-kpr-weekly": "benchmark-kpr", "adapt-model": "adapt-model",
                  "link-identities": "link-identities"}


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


def test_ingestion_deployment_runs_one_at_a_time_with_valid_parameters(tmp_path):
    from prefect.exceptions import ParameterTypeError

    from pipelines.flows import ingest_archive
    from pipelines.ingest_inputs import IngestInputs
    from workers.backends import BackendConfig
    from workers.errors import WorkerError
    from workers.ingest_options import IngestOptions

    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployment = {d["name"]: d for d in config["deployments"]}["ingest-archive-nightly"]
    assert deployment["concurrency_limit"]["limit"] == 1
    assert deployment["concurrency_limit"]["collision_strategy"] in ("ENQUEUE", "CANCEL_NEW")
    assert [s["active"] for s in deployment["schedules"]] == [False]  # off until an operator sets real paths
    parameters = deployment["parameters"]
    assert set(parameters) == set(inspect.signature(ingest_archive.fn).parameters)
    backend = parameters["options"]["backend"]
    for key in ("detector_model", "pose_model"):  # files of the operator's machine: empty stand-ins here
        (tmp_path / key).write_bytes(b"")
        backend[key] = str(tmp_path / key)
    validated = ingest_archive.validate_parameters(parameters)
    assert validated["inputs"] == IngestInputs(**parameters["inputs"])
    assert validated["options"] == IngestOptions(**{**parameters["options"], "backend": BackendConfig(**backend)})
    with pytest.raises(WorkerError, match=r"^segment length must be positive seconds, got -1.0$"):
        ingest_archive.validate_parameters({**parameters, "options": {**parameters["options"], "segment_s": -1}})
    with pytest.raises(WorkerError, match=r"^/no/model.onnx: YOLOX ONNX detector model not found$"):
        ingest_archive.validate_parameters({**parameters, "options": {"backend": {"name": "yolox",
                                                                                  "detector_model": "/no/model.onnx"}}})
    with pytest.raises(ParameterTypeError, match="options.segment: Unexpected keyword argument"):
        ingest_archive.validate_parameters({**parameters, "options": {"segment": 30}})


def test_deployments_take_the_project_folder_from_the_workers_environment():
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    (shell,), (folder,) = (entry.values() for entry in config["pull"])  # run_shell_script, set_working_directory
    assert "${KPR_PROJECT_DIR" in shell["script"] and shell["shell"]  # the worker's shell reads it at each run
    assert folder["directory"] == f"{{{{ {shell['id']}.stdout }}}}" and "{{ $" not in yaml.safe_dump(config["pull"])
    assert not any(s["active"] for d in config["deployments"] for s in d["schedules"])
