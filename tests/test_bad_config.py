"""Bad configs fail at startup with one line naming the key and what is valid, before anything is built
(unlearning/schema.py); and the security rules: no remote code unless a config asks, no pickled weights,
no secret in the run folder, outputs inside the run folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from tests.conftest import DATA_DIR, compose_config, make_tiny_llama
from tests.test_bad_input import assert_nothing_written
from unlearning import models
from unlearning.cli import CONFIG_DIR
from unlearning.errors import ConfigError
from unlearning.pipeline import run, run_evaluation
from unlearning.schema import prepare_config
from unlearning.settings import EvaluationSettings, RunSettings

SOURCE = Path(models.__file__).parent
SECRET = "sentinel-secret-0123456789"  # what a test puts in WANDB_API_KEY / HF_TOKEN

# (overrides, the exact error line as a regex)
BAD_CONFIGS = [
    (["optimizer.lr=-1e-3"], r"optimizer\.lr=-0\.001 is out of range; valid: > 0"),
    (["optimizer.lr=fast"], r"optimizer\.lr='fast' is not allowed; valid: float or Tensor"),
    (["finetune.lr=0"], r"finetune\.lr=0 is out of range; valid: > 0"),
    (["method.gamma=-1"], r"method\.gamma=-1 is out of range; valid: >= 0"),
    (["retain.alpha=-0.5"], r"retain\.alpha=-0\.5 is out of range; valid: >= 0"),
    (["method.beta=0"], r"method\.beta=0 is out of range; valid: > 0"),
    (["+method.gama=1"], r"method\.gama is not a parameter of unlearning\.methods\.npo\.NPO; valid: beta, gamma"),
    (["mia=default", "eval.groups.mia.k=1.5"], r"eval\.groups\.mia\.k=1\.5 is out of range; valid: \(0, 1\]"),
    (["muse=default", "eval.groups.muse.k=0"], r"eval\.groups\.muse\.k=0 is out of range; valid: \(0, 1\]"),
    (["method=fundial", "method.focus_fraction=1.5"], r"method\.focus_fraction=1\.5 is out of range; valid: \[0, 1\]"),
    (["data.batch_size=0"], r"data\.batch_size=0 is out of range; valid: >= 1"),
    (["finetune.batch_size=-4"], r"finetune\.batch_size=-4 is out of range; valid: >= 1"),
    (["trainer.max_steps=-2"], r"trainer\.max_steps=-2 is out of range; valid: >= -1"),
    (["trainer.max_epochs=2.5"], r"trainer\.max_epochs=2\.5 is not allowed; valid: int or null"),
    (["+trainer.max_step=3"], r"trainer\.max_step is not a parameter of lightning\.Trainer; valid: accelerator, "
                              r"strategy, devices, .+"),
    (["+finetune.epoch=3"], r"finetune\.epoch is not a key of finetune; valid: epochs, lr, batch_size, max_steps, "
                            r"target_path, retain_path"),
    (["+seeds=1"], r"seeds is not a key of the config; valid: seed, max_length, .+"),
    (["~data.batch_size"], r"data\.batch_size is missing; valid: int"),
    (["model=local"], r"model\.name_or_path is missing; valid: any value, given as model\.name_or_path=\.\.\."),
    (["method._target_=unlearning.methods.npo.NPOO"],
     r"method\._target_='unlearning\.methods\.npo\.NPOO' cannot be imported; valid: a dotted path to a class or "
     r"function"),
    (["eval.during_training.mode=median"], r"eval\.during_training\.mode='median' is not allowed; valid: 'max', 'min'"),
    (["model.lora={rank: 8}"], r"model\.lora\.rank is not a key of model\.lora; valid: r, alpha, target_modules, "
                               r"dropout, merge_on_save"),
    (["model.template.add_bos=maybe"], r"model\.template\.add_bos='maybe' is not allowed; valid: bool"),
    (["model.template.prompt='{question.__class__}'"],
     r"model\.template\.prompt='\{question\.__class__\}' is not allowed; valid: plain text and \{question\}, "
     r"no other braces"),
    (["model.template.prompt='{% if 1 %}{question}'"],
     r"model\.template\.prompt='\{% if 1 %\}\{question\}' is not allowed; valid: plain text and \{question\}, "
     r"no other braces"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_CONFIGS, ids=[" ".join(o) for o, _ in BAD_CONFIGS])
def test_bad_config_fails_at_startup(overrides, message, tmp_path):
    cfg = compose_config([f"paths.cache_dir={tmp_path / 'cache'}", *overrides], run_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match=f"^{message}$"):
        run(cfg)
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize(("overrides", "message"), [
    ([], r"checkpoint is missing; valid: any value, given as checkpoint=\.\.\."),
    (["checkpoint=some/folder", "+eval.groups.tofu.max_new_token=5"],
     r"eval\.groups\.tofu\.max_new_token is not a parameter of unlearning\.evaluation\.tofu\.TofuMetrics; valid: "
     r"batch_size, max_new_tokens, max_length, max_examples, generate, progress, budget_counts_prompt"),
], ids=["no checkpoint", "misspelled metric setting"])
def test_bad_evaluation_config_fails_at_startup(overrides, message, tmp_path):
    cfg = compose_config(overrides, config_name="evaluate", run_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match=f"^{message}$"):
        run_evaluation(cfg)
    assert_nothing_written(tmp_path)


def test_text_protocol_refuses_a_metric_group_that_reads_qa_splits_before_training(tmp_path):
    """A text corpus has no QA eval sets: the harness's benchmark tasks would fail after every stage
    trained; they fail before any (TOFU's group, always configured, is left out quietly)."""
    if not (DATA_DIR / "text").is_dir():
        pytest.skip(f"needs {DATA_DIR / 'text'}")
    cfg = compose_config(["experiment=whp_sherlock", "eval.groups.lm_eval.benchmark_tasks=true",
                          f"paths.cache_dir={tmp_path / 'cache'}", f"paths.data_dir={DATA_DIR}"], run_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match=r"^eval\.groups\.lm_eval reads a question-answer benchmark, which "
                                          r"protocol=text does not have: set eval\.groups\.lm_eval=null or "
                                          r"eval\.groups\.lm_eval\.benchmark_tasks=false$"):
        run(cfg)
    assert_nothing_written(tmp_path)


def test_evaluation_takes_an_experiment_and_ignores_its_training_keys(tmp_path):
    """`unlearn-eval experiment=tofu_stories260K` sets finetune.* too: accepted; a misspelling is not."""
    cfg = compose_config(["experiment=tofu_stories260K", "checkpoint=some/folder"], config_name="evaluate",
                         run_dir=tmp_path / "run")
    assert cfg.finetune.epochs == 3
    prepare_config(cfg, EvaluationSettings)
    cfg = compose_config(["experiment=tofu_stories260K", "checkpoint=some/folder", "+finetunes.epochs=3"],
                         config_name="evaluate", run_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match=r"^finetunes is not a key of the config; valid: seed, max_length, "):
        prepare_config(cfg, EvaluationSettings)


def test_secret_in_the_config_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    cfg = compose_config(["logger=wandb", "+logger.api_key=${oc.env:WANDB_API_KEY}"], run_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match=r"^logger\.api_key holds the value of \$WANDB_API_KEY; valid: secrets stay "
                                          r"in the environment \(the config is written to results\.json and the "
                                          r"loggers\)$") as error:
        run(cfg)
    assert SECRET not in str(error.value)
    assert_nothing_written(tmp_path)


def test_cli_refuses_a_secret_in_one_line_and_writes_it_nowhere(tmp_path):
    """Through the real entry point: exit status 1, one `error:` line, and neither the secret nor a result
    in the run folder (Hydra's .hydra/ and log file hold the interpolation, not its value)."""
    env = {**os.environ, "WANDB_API_KEY": SECRET, "HF_TOKEN": SECRET}
    result = subprocess.run(
        [sys.executable, "-c", "from unlearning.cli import unlearn; unlearn()", "logger=wandb",
         "+logger.api_key=${oc.env:WANDB_API_KEY}", f"hydra.run.dir={tmp_path / 'run'}",
         f"paths.cache_dir={tmp_path / 'cache'}"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: logger.api_key holds the value of $WANDB_API_KEY; valid: secrets stay in the environment (the config "
        "is written to results.json and the loggers)"), result.stderr[-2000:]
    assert "Traceback" not in result.stderr and SECRET not in result.stdout + result.stderr
    files = [path for path in (tmp_path / "run").rglob("*") if path.is_file()]
    assert {path.parent.name for path in files} <= {".hydra", "run"}  # Hydra's config dump and job log only
    assert not (tmp_path / "run" / "results.json").exists()
    assert not any(SECRET in path.read_text() for path in files)


def test_secrets_in_the_environment_stay_out_of_an_evaluation(tmp_path, monkeypatch, data_dir):
    """A cheap `unlearn-eval` with both secrets set: no file of the run folder holds either."""
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    cfg = compose_config(["model=stories260K", f"checkpoint={data_dir}/models/stories260K",
                          "eval.groups.tofu.max_examples=1", "eval.groups.tofu.max_new_tokens=1"],
                         config_name="evaluate", run_dir=tmp_path / "run")
    run_evaluation(cfg)
    files = [path for path in (tmp_path / "run").rglob("*") if path.is_file()]
    assert (tmp_path / "run" / "results.json") in files
    assert not any(SECRET in path.read_text() for path in files)


def test_relative_output_paths_land_in_the_run_folder(tmp_path):
    run_dir = tmp_path / "run"
    cfg = compose_config(["logger.save_dir=my_logs", "eval.groups.lm_eval.benchmark_dir=benchmark_sets"],
                         run_dir=run_dir)
    prepare_config(cfg, RunSettings)
    assert cfg.logger.save_dir == str(run_dir / "my_logs")
    assert cfg.eval.groups.lm_eval.benchmark_dir == str(run_dir / "benchmark_sets")
    inside = compose_config([f"logger.save_dir={run_dir / 'logs2'}"], run_dir=run_dir)
    prepare_config(inside, RunSettings)
    assert inside.logger.save_dir == str(run_dir / "logs2")  # an absolute path inside the run folder stays
    default = compose_config([], run_dir=run_dir)
    prepare_config(default, RunSettings)
    assert default.logger.save_dir == f"{run_dir}/logs"


def test_no_shipped_config_trusts_remote_code():
    """Every model option and the classifier selector: trust_remote_code false or absent."""
    for option in sorted(path.stem for path in (Path(CONFIG_DIR) / "model").glob("*.yaml")):
        cfg = compose_config([f"model={option}", f"model.name_or_path={DATA_DIR}/models/stories260K"]
                             if option == "local" else [f"model={option}"])
        assert cfg.model.get("trust_remote_code", False) is False, option
    cfg = compose_config(["selector=classifier", "selector.model=some/classifier"])
    assert cfg.selector.trust_remote_code is False


def test_no_code_turns_remote_code_on():
    hits = [f"{path.name}: {line.strip()}" for path in SOURCE.rglob("*.py")
            for line in path.read_text().splitlines() if re.search(r"trust_remote_code\s*=\s*True", line)]
    assert hits == []


def test_remote_code_only_when_the_model_config_asks(tokenizer, tmp_path, monkeypatch):
    folder = tmp_path / "model"
    tokenizer.save_pretrained(folder)
    make_tiny_llama(tokenizer).save_pretrained(folder)
    asked = []
    for auto in (models.AutoTokenizer, models.AutoModelForCausalLM):
        def spy(path, *args, _load=auto.from_pretrained, **kwargs):
            asked.append(kwargs["trust_remote_code"])
            return _load(path, *args, **kwargs)
        monkeypatch.setattr(auto, "from_pretrained", spy)
    models.PretrainedModel(name="m", name_or_path=str(folder)).load(folder)
    assert asked == [False, False]


def test_checkpoints_are_loaded_without_running_pickled_code(tmp_path):
    """resume=true loads Lightning's checkpoint through TorchCheckpointIO: weights_only, so an object
    that would run code when unpickled is refused, and its code never runs."""
    ran = tmp_path / "payload_ran"

    class Payload:
        def __reduce__(self):
            return open, (str(ran), "w")

    checkpoint = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "payload": Payload()}, checkpoint)
    with pytest.raises(Exception, match="Weights only load failed"):
        TorchCheckpointIO().load_checkpoint(checkpoint)
    assert not ran.exists()
    hits = [path.name for path in SOURCE.rglob("*.py")
            if re.search(r"torch\.load\((?![^)]*weights_only=True)", path.read_text())]
    assert hits == []
