"""What the console scripts call: `run(cfg)` runs the configured protocol (unlearning/protocols/) and
returns the sweep metric; `run_evaluation(cfg)` scores saved models (`unlearn-eval`)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from unlearning.config import build
from unlearning.console import hydra_verbose, set_up_console
from unlearning.data.anchored_terms import load_dictionary
from unlearning.errors import ConfigError
from unlearning.evaluation.evaluator import ModelSource
from unlearning.experiment import Experiment
from unlearning.launchers import check_launch
from unlearning.schema import prepare_config
from unlearning.settings import EvaluationSettings, RunSettings
from unlearning.stages.cache import CHECKPOINT_FOLDER, DONE_MARKER, ResumePolicy, refuse_foreign_checkpoint
from unlearning.strategies import start_processes
from unlearning.sweeps import check_objective


def run(cfg: DictConfig) -> float | list[float]:
    """The entry point's only call: run the configured protocol, return the sweep metric. A multi-process
    trainer (conf/hardware/) starts its processes here; each runs the protocol (unlearning/strategies.py)."""
    set_up_console(hydra_verbose())
    prepare_config(cfg, RunSettings)
    check_dictionaries(cfg)
    check_objective(cfg)
    check_resume(cfg)
    check_launch(cfg.trainer)
    start_processes(cfg.trainer)
    return build(cfg.protocol)(cfg)


def check_dictionaries(cfg: DictConfig) -> None:
    """The anchored-terms dictionaries a run will read, read now: a broken one fails at start-up, not
    after three training stages."""
    for key in ("data.anchored_terms", "eval.groups.familiarity.anchored_terms"):
        name = OmegaConf.select(cfg, key)
        if name:
            load_dictionary(name)


def check_resume(cfg: DictConfig) -> None:
    """`resume=<file>` must be a whole checkpoint this project wrote, and `resume=true` finds one (or the
    saved model of a run killed while evaluating) in the run folder: checked now, not after the
    finetuning stages. The unlearning stage checks the config it belongs to."""
    resume = cfg.get("resume")
    if isinstance(resume, str):
        path = Path(resume).expanduser()
        if not path.is_file():
            raise ConfigError(f"resume={resume}: no checkpoint {path}; valid: <run folder>/checkpoints/last.ckpt")
        refuse_foreign_checkpoint(path, f"resume={resume}")
    elif resume is True:
        run_dir = Path(cfg.paths.run_dir)
        last = run_dir / CHECKPOINT_FOLDER / "last.ckpt"
        if last.is_file():
            refuse_foreign_checkpoint(last, "resume=true")
            ResumePolicy.from_config(cfg).written_under_this_config(last)  # a corrupt CONFIG.json is named
        elif not any(run_dir.glob(f"**/{DONE_MARKER}")) and not any(run_dir.glob("request*")):
            raise ConfigError(f"resume=true: no checkpoint {last} (resume=true needs hydra.run.dir=<the killed "
                              "run's folder>)")


def run_evaluation(cfg: DictConfig) -> dict:
    """`unlearn-eval`: score a saved checkpoint (and, for forget quality, a retain model)."""
    set_up_console(hydra_verbose())
    prepare_config(cfg, EvaluationSettings)
    check_dictionaries(cfg)
    folders = {"checkpoint": cfg.checkpoint}
    if cfg.get("retain_checkpoint"):
        folders["retain"] = cfg.retain_checkpoint
    for name, folder in folders.items():
        if not Path(folder).is_dir():
            raise ConfigError(f"{name}={folder} is not a model folder")
    experiment = Experiment.from_config(cfg)
    results = experiment.evaluator.evaluate([ModelSource(name, folder) for name, folder in folders.items()],
                                            "retain" if "retain" in folders else None)
    results.refuse_non_finite(results.report(experiment.run_dir, cfg))
    return results.models
