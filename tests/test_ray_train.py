"""Ray Train DDP training: two CPU workers, a worker killed mid-run, a re-run that resumes, bad configs."""
from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from training.train import train
from training.run_settings import TrainConfigError
from training.train_config import TrainConfig

EPOCHS = 24


@pytest.fixture(scope="module")
def crops(tmp_path_factory) -> Path:
    from training.synthetic import WorldConfig, export_reid_crops

    root = tmp_path_factory.mktemp("ray_train") / "crops"
    world = dataclasses.replace(WorldConfig.small(seed=11), n_identities=16, duration_s=24.0)
    export_reid_crops(root, world, train_fraction=0.6)
    return root


@pytest.fixture(scope="module")
def ray_session():
    from workers.ray_stages import ensure_ray

    ensure_ray(num_cpus=2)


def _config(crops: Path, tmp_path: Path, name: str) -> TrainConfig:
    return TrainConfig(data_root=str(crops), out=str(tmp_path / name), preset="tiny", epochs=EPOCHS, workers=2,
                       identities_per_batch=4, storage_path=str(tmp_path / "runs"), run_name=name, max_failures=1)


def _train_worker_pids() -> list[int]:
    """PIDs of this machine's Ray Train worker processes (Ray titles them ray::RayTrainWorker)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(b"ray::RayTrainWorker"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _checkpoints(run: Path) -> list[Path]:
    return sorted(run.glob("checkpoint_*")) if run.is_dir() else []


def _weights(path: str) -> dict[str, torch.Tensor]:
    from kpr_model.checkpoint import load_checkpoint

    return load_checkpoint(path)[0].state_dict()


@pytest.mark.integration
def test_killed_worker_resumes_from_checkpoint_and_matches_an_uninterrupted_run(crops, ray_session, tmp_path):
    clean = train(_config(crops, tmp_path, "clean"))
    assert clean["epochs_completed"] == EPOCHS and clean["workers"] == 2

    crashed_cfg = _config(crops, tmp_path, "crashed")
    outcome: dict = {}
    runner = threading.Thread(target=lambda: outcome.update(train(crashed_cfg)))
    runner.start()
    run_dir, killed = tmp_path / "runs" / "crashed", None
    deadline = time.monotonic() + 300
    while killed is None and runner.is_alive() and time.monotonic() < deadline:
        pids = _train_worker_pids()
        if len(_checkpoints(run_dir)) >= 2 and pids:
            killed = pids[-1]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    runner.join(timeout=600)
    assert killed is not None, "the run ended before a worker could be killed"
    assert outcome["epochs_completed"] == EPOCHS and outcome["steps"] == clean["steps"]
    # Same batches, augmentations and optimiser state after the restart: the same model as the clean run.
    clean_w, crashed_w = _weights(clean["checkpoint"]), _weights(outcome["checkpoint"])
    worst = max(float((clean_w[k].float() - crashed_w[k].float()).abs().max()) for k in clean_w)
    assert worst < 1e-3, f"resumed run drifted from the uninterrupted one by {worst}"
    assert abs(outcome["heldout"]["map"] - clean["heldout"]["map"]) < 0.02

    again = train(crashed_cfg)  # a re-run of a finished run resumes at its end: nothing retrained
    assert again["steps"] == outcome["steps"] and again["model_id"] == outcome["model_id"]


def test_bad_training_configs_give_one_clear_error(tmp_path):
    base = {"data_root": "d", "out": "o"}
    cases = [
        ({**base, "epoch": 3}, "unknown training config keys epoch"),
        ({**base, "epochs": 0}, "epochs must be an integer >= 1"),
        ({**base, "lr": "fast"}, "lr must be float"),
        ({**base, "optimizer": "rmsprop"}, "optimizer must be"),
        ({**base, "preset": "huge"}, "unknown preset"),
        ({**base, "workers": -1}, "workers must be >= 0"),
        ({"out": "o"}, "needs data_root"),
        ({**base, "augment": {"flip": 1}}, "bad training config"),
        (["epochs", 3], "mapping"),
    ]
    for values, message in cases:
        with pytest.raises(TrainConfigError, match=message):
            TrainConfig.from_dict(values)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("epochs: [1, 2\n")
    with pytest.raises(TrainConfigError, match="not valid YAML"):
        TrainConfig.from_yaml(bad_yaml)
    with pytest.raises(TrainConfigError, match="cannot read"):
        TrainConfig.from_yaml(tmp_path / "missing.yaml")
    good = tmp_path / "good.yaml"
    good.write_text("data_root: d\nout: o\nepochs: 7\nworkers: 2\n")
    assert TrainConfig.from_yaml(good, {"epochs": 9}).epochs == 9


@pytest.mark.integration
def test_training_flow_trains_from_a_yaml_config_and_reports(crops, tmp_path):
    from prefect.artifacts import Artifact

    from pipelines.training_flows import train_kpr

    config = tmp_path / "train.yaml"
    config.write_text(f"data_root: {crops}\nout: {tmp_path / 'model'}\npreset: tiny\nepochs: 2\nidentities_per_batch: 4\n")
    result = train_kpr(str(config), overrides={"epochs": 3})
    assert result["epochs_completed"] == 3 and (tmp_path / "model" / "model.safetensors").is_file()
    assert 0.0 <= result["heldout"]["map"] <= 1.0
    report = Artifact.get("training-report")
    assert report is not None and result["model_id"] in report.data
