"""Sweeps and dashboards: what a job returns to a sweeper and how a failed job is recorded (fast); then,
through the `unlearn` command on the default experiment cut short (slow): a grid sweep, an Optuna study
continued by a second invocation, a failed job inside an Optuna multi-objective sweep, two concurrent
submitit jobs sharing one stage build, and an offline W&B run's summary."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict
from wandb.proto import wandb_internal_pb2

from unlearning.cli import CONFIG_DIR
from unlearning.data.benchmark import DataError
from unlearning.errors import ConfigError
from unlearning.results import FAILED_FILE
from unlearning.sweeps import GridSamplerStopsQuietly, run_sweep_job, sweep_objective

SHORT = ["trainer.max_steps=3", "eval.groups.tofu.max_examples=20", "eval.groups.lm_eval.limit=5", "finetune.epochs=2",
         "finetune.max_steps=10"]


def test_sweep_objective_is_one_metric_or_a_list_in_order():
    metrics = {"forget_quality": 0.25, "model_utility": 0.5}
    assert sweep_objective(metrics, "forget_quality") == 0.25
    assert sweep_objective(metrics, ["model_utility", "forget_quality"]) == [0.5, 0.25]
    with pytest.raises(ConfigError, match="objective_metric='nope'.*valid: forget_quality, model_utility"):
        sweep_objective(metrics, ["forget_quality", "nope"])


@pytest.fixture
def multirun_job(tmp_path):
    """Hydra's state inside one job of a multirun whose folder is `tmp_path`."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["data.split=forget07"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path)
        cfg.hydra.mode = RunMode.MULTIRUN
    HydraConfig.instance().set_config(cfg)
    yield cfg
    HydraConfig.instance().cfg = None


def test_a_failed_sweep_job_writes_failed_json_and_returns_none(multirun_job, tmp_path):
    """None, not NaN: the Optuna sweeper records None as a FAIL trial and goes on (NaN ends the sweep)."""
    def fails(cfg):
        raise DataError(f"synthetic benchmark: unknown split '{cfg.data.split}'\nsecond line")

    assert run_sweep_job(fails, multirun_job) is None
    assert json.loads((tmp_path / FAILED_FILE).read_text()) == {
        "error": "DataError", "message": "synthetic benchmark: unknown split 'forget07'",
        "overrides": ["data.split=forget07"]}
    assert run_sweep_job(lambda cfg: [1.0, 2.0], multirun_job) == [1.0, 2.0]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def unlearn(*overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-c", "from unlearning.cli import unlearn; unlearn()", *overrides, *SHORT],
                            capture_output=True, text=True, timeout=1200, env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_grid_sweep_whose_last_trial_failed_ends_normally(monkeypatch):
    """Hydra's Optuna sweeper tells a failed trial outside its guard; the grid sampler then stops the study
    from `after_trial`, which raised after the last grid point. The sweep's callback makes that stop quiet."""
    monkeypatch.setattr(optuna.samplers.GridSampler, "after_trial", optuna.samplers.GridSampler.after_trial)

    def failed_last_trial() -> optuna.Study:
        study = optuna.create_study(sampler=optuna.samplers.GridSampler({"data.split": ["forget10"]}))
        study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
        return study

    with pytest.raises(RuntimeError, match="Study.stop"):
        failed_last_trial()
    sweep = OmegaConf.create({"hydra": {"sweeper": {
        "_target_": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"}}})
    GridSamplerStopsQuietly().on_multirun_start(sweep)
    assert [trial.state.name for trial in failed_last_trial().trials] == ["FAIL"]


def job_folders(sweep_dir: Path) -> dict[str, Path]:
    """Job folder name (the job's overrides) -> folder."""
    return {p.name: p for p in sweep_dir.iterdir() if p.is_dir() and "=" in p.name}


def load_study(sweep_dir: Path, name: str):
    import optuna  # here, not at the top: its import warns about SQLAlchemy 2.0 in every fast run

    return optuna.load_study(study_name=name, storage=f"sqlite:///{sweep_dir}/optuna.db")


def wandb_records(path: Path):
    """The records of an offline run's .wandb file (offline runs write no files/wandb-summary.json): a
    7-byte file header, then LevelDB-log blocks of 32 KiB whose chunks (7-byte header: checksum, length,
    type) join into protobuf Records; type 1 is a whole record, 4 the last chunk of one."""
    data, position, chunks = path.read_bytes(), 7, []
    while position + 7 <= len(data):
        left = 32768 - position % 32768
        _, length, kind = struct.unpack("<IHB", data[position:position + 7]) if left >= 7 else (0, 0, 0)
        if length == 0 and kind == 0:  # block padding
            position += left
            continue
        chunks.append(data[position + 7:position + 7 + length])
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            chunks = []
            yield record


@pytest.mark.ci
@pytest.mark.slow
def test_grid_sweep_names_job_folders_after_overrides(cache_dir, tmp_path):
    unlearn("--multirun", "method=npo,grad_ascent", "optimizer.lr=1e-3,5e-4", f"hydra.sweep.dir={tmp_path}",
            f"paths.cache_dir={cache_dir}")
    folders = job_folders(tmp_path)
    combos = {(o["method"], float(o["optimizer.lr"]))
              for o in (dict(item.split("=", 1) for item in name.split(",")) for name in folders)}
    assert combos == {(m, lr) for m in ("npo", "grad_ascent") for lr in (1e-3, 5e-4)}
    for folder in folders.values():
        assert "forget_quality" in json.loads((folder / "results.json").read_text())["models"]["unlearned"]


@pytest.mark.slow
def test_optuna_study_is_continued_by_a_second_invocation(cache_dir, tmp_path):
    sweep = ["--multirun", "experiment=optuna_npo", f"hydra.sweep.dir={tmp_path}", f"paths.cache_dir={cache_dir}"]
    unlearn(*sweep, "hydra.sweeper.n_trials=4")
    unlearn(*sweep, "hydra.sweeper.n_trials=2")
    study = load_study(tmp_path, "npo_forget_quality")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 6
    results = [json.loads((f / "results.json").read_text()) for f in job_folders(tmp_path).values()]
    assert sorted(r["models"]["unlearned"]["forget_quality"] for r in results) == sorted(t.value for t in study.trials)
    assert (tmp_path / "optimization_results.yaml").exists()


@pytest.mark.slow
def test_failed_job_is_recorded_and_the_multi_objective_sweep_goes_on(cache_dir, tmp_path):
    """`data.split=forget07` fails inside the run: FAILED.json in its folder, a FAIL trial; the other job
    returns [forget_quality, model_utility] to the two-direction study."""
    unlearn("--multirun", "hydra/sweeper=optuna_pareto", "hydra/sweeper/sampler=grid", "hydra.sweeper.n_trials=2",
            "objective_metric=[forget_quality,model_utility]", "data.split=forget10,forget07",
            f"hydra.sweep.dir={tmp_path}", f"paths.cache_dir={cache_dir}")
    folders = {name.split("data.split=")[1].split(",")[0]: f for name, f in job_folders(tmp_path).items()}
    failure = json.loads((folders["forget07"] / "FAILED.json").read_text())
    assert failure["error"] == "ConfigError" and "data.split" in failure["message"] and "forget07" in failure["message"]
    unlearned = json.loads((folders["forget10"] / "results.json").read_text())["models"]["unlearned"]
    by_split = {t.params["data.split"]: t for t in load_study(tmp_path, "unlearning").trials}
    assert by_split["forget07"].state.name == "FAIL"
    assert by_split["forget10"].values == [unlearned["forget_quality"], unlearned["model_utility"]]


@pytest.mark.slow
def test_concurrent_submitit_jobs_build_a_stage_once(cache_dir, tmp_path):
    """Two jobs at once need the same new target (finetune.lr differs from the other tests'): one
    builds it while the other waits on the stage lock, then reuses it."""
    unlearn("--multirun", "hydra/launcher=local", "method=npo,grad_ascent", "finetune.lr=2e-3",
            f"hydra.sweep.dir={tmp_path}", f"paths.cache_dir={cache_dir}")
    folders = job_folders(tmp_path)
    assert len(folders) == 2 and all((f / "results.json").exists() for f in folders.values())
    logs = "".join(log.read_text() for f in folders.values() for log in f.glob("*.log"))
    assert logs.count("stage finetune_target: building") == 1
    assert logs.count("stage finetune_target: reusing") == 1


@pytest.mark.slow
def test_wandb_offline_run_holds_the_final_metrics(cache_dir, tmp_path):
    """The unlearn stage's run: job_type, tags, the resolved config, per-step losses, the final metrics as
    its summary and results.json as an artifact."""
    unlearn("logger=wandb", "trainer.log_every_n_steps=1", f"hydra.run.dir={tmp_path}", f"paths.cache_dir={cache_dir}",
            env={"WANDB_MODE": "offline"})
    unlearned = json.loads((tmp_path / "results.json").read_text())["models"]["unlearned"]
    runs = [list(wandb_records(path)) for path in tmp_path.glob("wandb/offline-run-*/run-*.wandb")]
    records = next(r for r in runs if any(x.HasField("run") and x.run.job_type == "unlearn" for x in r))
    run = next(x.run for x in records if x.HasField("run"))
    assert {"npo", "tiny_llama", "synthetic"} <= set(run.tags)
    config = {item.key for x in records if x.HasField("config") for item in x.config.update}
    assert {"method", "optimizer", "objective_metric"} <= config
    history = {item.key or "/".join(item.nested_key) for x in records if x.HasField("history") for item in x.history.item}
    assert "train/loss" in history
    summary = {item.key: json.loads(item.value_json) for x in records if x.HasField("summary")
               for item in x.summary.update}
    assert summary["forget_quality"] == pytest.approx(unlearned["forget_quality"])
    assert summary["model_utility"] == pytest.approx(unlearned["model_utility"])
    assert any(x.HasField("artifact") and x.artifact.type == "results" for x in records)
