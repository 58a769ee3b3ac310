"""The README's "how to add" table is true: a method that reads a new batch set is two files of its own
(a Python module and a `method/` YAML on Hydra's search path); nothing in `unlearning/` or `conf/` changes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DATA_DIR, REPO, compose_config
from unlearning.experiment import Experiment
from unlearning.stages import inputs as stage_inputs

# A throwaway method: gradient ascent on the forget answers, descent on the same answers shouted (a new
# batch set, "shouted", registered by the method's own module).
METHOD = '''
from unlearning.methods.base import Objective, forward_logits
from unlearning.ops import mean_token_nll
from unlearning.stages.inputs import batch_set


@batch_set("shouted")
def shouted_set(inputs):
    return [{**record, "answer": record["answer"].upper()} for record in inputs.batch_set("forget")]


class Shouting(Objective):
    batch_keys = ("forget", "shouted")

    def forward(self, policy, batch):
        forget, shouted = batch["forget"], batch["shouted"]
        return (mean_token_nll(forward_logits(policy, shouted), shouted["labels"])
                - mean_token_nll(forward_logits(policy, forget), forget["labels"]))
'''


def git_status() -> str:
    """What git sees changed in the package and its configs."""
    return subprocess.run(["git", "status", "--porcelain", "--", "unlearning", "conf"], cwd=REPO,
                          capture_output=True, text=True, check=True).stdout


@pytest.fixture
def plugin(tmp_path, monkeypatch) -> Path:
    """The method's two files in a folder outside the repository, importable and on Hydra's search path."""
    (tmp_path / "shouting_method.py").write_text(METHOD)
    (tmp_path / "conf" / "method").mkdir(parents=True)
    (tmp_path / "conf" / "method" / "shouting.yaml").write_text("_target_: shouting_method.Shouting\ngamma: 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(stage_inputs, "BATCH_SETS", dict(stage_inputs.BATCH_SETS))  # the registration is undone
    monkeypatch.delitem(sys.modules, "shouting_method", raising=False)
    return tmp_path


def test_a_new_batch_set_is_provided_to_the_method_that_registers_it(plugin, tmp_path):
    from shouting_method import Shouting

    experiment = Experiment.from_config(compose_config(["retain=none"], run_dir=tmp_path / "run"))
    resolved = stage_inputs.StageInputs(experiment, None, None, None).resolve(Shouting(), None)
    forget = experiment.benchmark.forget
    assert list(resolved.sets) == ["forget", "shouted"] and resolved.frozen == {}
    assert [r["answer"] for r in resolved.sets["shouted"]] == [r["answer"].upper() for r in forget]


def test_an_unknown_batch_set_names_the_registered_ones(tmp_path):
    from unlearning.errors import ConfigError
    from unlearning.methods.grad_ascent import GradAscent

    class Whispering(GradAscent):
        batch_keys = ("forget", "whispered")

    experiment = Experiment.from_config(compose_config(["retain=none"], run_dir=tmp_path / "run"))
    with pytest.raises(ConfigError, match=r"^the method reads batch set 'whispered'; registered batch sets: \["):
        stage_inputs.StageInputs(experiment, None, None, None).resolve(Whispering(), None)


@pytest.mark.ci
@pytest.mark.slow
def test_a_throwaway_method_runs_end_to_end_from_its_own_files(plugin, tmp_path):
    """`unlearn method=shouting` with the plugin folder on PYTHONPATH and Hydra's search path, and the
    repository left as it was (git sees no change)."""
    before = git_status()
    env = {**os.environ, "PYTHONPATH": str(plugin), "UNLEARNING_DATA_DIR": str(DATA_DIR)}
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-c", "from unlearning.cli import unlearn; unlearn()", "method=shouting", "retain=none",
         f"hydra.searchpath=[file://{plugin / 'conf'}]", f"hydra.run.dir={run_dir}",
         f"paths.cache_dir={tmp_path / 'cache'}", "finetune.epochs=1", "trainer.max_steps=2", "~lm_eval",
         "logger=none", "eval.groups.tofu.max_examples=4", "eval.groups.tofu.max_new_tokens=4"],
        capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["config"]["method"]["_target_"] == "shouting_method.Shouting"
    assert set(results["models"]) == {"target", "retain", "unlearned"}
    assert git_status() == before


def test_the_retain_set_of_a_text_corpus_is_its_retain_records():
    """Without a selector nothing is flagged, and text records (no question) pass as they are."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    retain = [{"text": "General text."}, {"text": "More of it."}]
    experiment = SimpleNamespace(cfg=OmegaConf.create({}), benchmark=SimpleNamespace(retain=retain))
    assert stage_inputs.StageInputs(experiment, None, None, None).batch_set("retain") == retain
