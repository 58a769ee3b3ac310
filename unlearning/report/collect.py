"""Reading a run or sweep folder for `unlearn-report`: every job below it, as it was left on disk.

A job is any folder holding `.hydra/config.yaml`: a single run, or one job of a Hydra multirun, whose
folder is named after its overrides (`hydra.sweep.subdir` in conf/hydra/default.yaml), so that jobs which
differ only in `seed=` differ only in that item of their folder name. A job without results.json failed
(its FAILED.json says why when the sweep caught the error) and is kept as a failed job, not dropped.

The curves a job logged over unlearning steps: the evaluation during training from
eval_during_training.json (written whatever the logger), or else from the `eval/*` columns of the CSV
logger's logs/unlearn/version_*/metrics.csv, which also holds the per-step losses (`train/*`); a
sequential run's requests one after another.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from unlearning.results import FAILED_FILE, read_json_or_none

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
EVAL_HISTORY_FILE = "eval_during_training.json"
REQUEST_FOLDER = re.compile(r"request(\d+)")  # a sequential run's requests (unlearning/protocols/sequential.py)
EVAL_PREFIX = "eval/"
LOSS_PREFIX = "train/"
SEED_ITEM = re.compile(r"(^|,)seed=[^,]*")
METHOD_ITEM = re.compile(r"(^|[,/])method=([^,/]+)")

Curves = dict[str, list[tuple[int, float]]]  # metric -> (step, value) in step order


@dataclass
class Job:
    label: str  # the job folder relative to the report's folder (in a sweep: the job's overrides)
    folder: Path
    config: DictConfig  # .hydra/config.yaml, unresolved
    models: dict[str, dict[str, float]]  # model -> metric -> value; empty when the job failed
    failure: str | None = None
    eval_curves: Curves = field(default_factory=dict)
    loss_curves: Curves = field(default_factory=dict)

    @property
    def seed(self) -> int | None:
        return self.config.get("seed")

    @property
    def method(self) -> str:
        """The method's config name (conf/method/<it>.yaml: the job's .hydra/hydra.yaml, else its label's
        `method=` item), else its class."""
        choices = self.folder / ".hydra" / "hydra.yaml"
        chosen = OmegaConf.load(choices).hydra.runtime.choices.get("method") if choices.exists() else None
        if chosen or (chosen := METHOD_ITEM.search(self.label)):
            return chosen if isinstance(chosen, str) else chosen[2]
        target = OmegaConf.select(self.config, "method._target_", default=None)
        return target.rpartition(".")[2] if target else "unlearned"

    @property
    def split(self) -> str | None:
        return OmegaConf.select(self.config, "data.split", default=None)

    @property
    def group(self) -> str:
        """The label without its `seed=` item, shared by the jobs that differ only in seed; a sweep over
        seeds alone is one group, named after the sweep folder."""
        parent, _, name = self.label.rpartition("/")
        name = SEED_ITEM.sub("", name).lstrip(",")
        if not name:
            return parent or self.folder.parent.name
        return f"{parent}/{name}" if parent else name


def collect(root: Path) -> list[Job]:
    """Every job below `root` (resolved), in folder-name order."""
    root = root.resolve()
    return [read_job(config.parent.parent, root) for config in sorted(root.rglob(".hydra/config.yaml"))]


def read_job(folder: Path, root: Path) -> Job:
    label = folder.relative_to(root).as_posix() if folder != root else folder.name
    try:
        config = OmegaConf.load(folder / ".hydra" / "config.yaml")
    except Exception as error:  # yaml and omegaconf raise several types: the job is listed, not the report lost
        return Job(label, folder, OmegaConf.create(), models={},
                   failure=f"{folder / '.hydra' / 'config.yaml'} is unreadable: {first_line(error)}")
    results = folder / RESULTS_FILE
    if not results.exists():
        return Job(label, folder, config, models={}, failure=failure_reason(folder))
    models = read_models(results)
    if isinstance(models, str):
        return Job(label, folder, config, models={}, failure=models)
    try:
        eval_curves, loss_curves = unlearning_curves(folder)
    except (OSError, ValueError, KeyError, TypeError) as error:  # a truncated log: the results still count
        log.warning("%s: its curves are unreadable (%s): shown without them", folder, first_line(error))
        eval_curves, loss_curves = {}, {}
    return Job(label, folder, config, models=models, eval_curves=eval_curves, loss_curves=loss_curves)


def read_models(results: Path) -> dict | str:
    """results.json's metrics per model, or why they cannot be read (the job is then listed as failed)."""
    try:
        models = json.loads(results.read_text(encoding="utf-8"))["models"]
    except (OSError, UnicodeDecodeError) as error:
        return f"{results} is unreadable: {first_line(error)}"
    except json.JSONDecodeError as error:
        return f"{results} is corrupt: not valid JSON at line {error.lineno} (truncated?)"
    except (KeyError, TypeError):
        return f"{results} is corrupt: it has no 'models' mapping"
    if not isinstance(models, dict) or not all(isinstance(metrics, dict) for metrics in models.values()):
        return f"{results} is corrupt: 'models' is not a mapping of model to metrics"
    return models


def first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0][:200]


def unlearning_curves(folder: Path) -> tuple[Curves, Curves]:
    """The job's evaluation and loss curves over unlearning steps. A sequential run unlearned in
    requests (`request<i>/`, logged as `logs/request<i>/unlearn`), each counting steps from 0: their
    curves are laid end to end, each request's steps after the previous one's."""
    requests = sorted((int(match[1]), Path(match[0])) for path in folder.glob("request*")
                      if (match := REQUEST_FOLDER.fullmatch(path.name)))
    evals, losses, offset = [], [], 0
    for part in [part for _, part in requests] or [Path()]:
        logged = logged_curves(folder / "logs" / part / "unlearn")
        part_eval = eval_history(folder / part / EVAL_HISTORY_FILE) or with_prefix(logged, EVAL_PREFIX)
        part_loss = with_prefix(logged, LOSS_PREFIX)
        evals.append(shifted(part_eval, offset))
        losses.append(shifted(part_loss, offset))
        offset += 1 + max((step for curve in (*part_eval.values(), *part_loss.values()) for step, _ in curve), default=-1)
    return joined(evals), joined(losses)


def shifted(curves: Curves, offset: int) -> Curves:
    return {name: [(step + offset, value) for step, value in points] for name, points in curves.items()}


def joined(parts: list[Curves]) -> Curves:
    """Each metric's points from every part, in part order."""
    return {name: [point for part in parts for point in part.get(name, [])]
            for name in dict.fromkeys(name for part in parts for name in part)}


def failure_reason(folder: Path) -> str:
    failed = folder / FAILED_FILE
    if not failed.exists():
        return f"no {RESULTS_FILE} (the job crashed, or is still running)"
    record = read_json_or_none(failed)
    if not isinstance(record, dict) or not {"error", "message"} <= record.keys():
        return f"no {RESULTS_FILE}, and {failed} is corrupt"
    return f"{record['error']}: {record['message']}"


def eval_history(path: Path) -> Curves:
    """eval_during_training.json: a list of `{"step": s, metric: value, ...}`."""
    if not path.exists():
        return {}
    history = json.loads(path.read_text())
    names = sorted({name for record in history for name in record if name != "step"})
    return {name: [(record["step"], record[name]) for record in history if name in record] for name in names}


def logged_curves(logs: Path) -> Curves:
    """Every column of the CSV logger's metrics.csv files under `logs`, in version order (a resumed run
    starts a new version): at a step logged twice, the later version's value wins."""
    by_metric: dict[str, dict[int, float]] = {}
    versions = sorted(logs.glob("version_*/metrics.csv"),
                      key=lambda path: int(path.parent.name.removeprefix("version_")))
    for metrics_file in versions:
        with metrics_file.open(newline="") as handle:
            for row in csv.DictReader(handle):
                step = int(row.pop("step"))
                for name, value in row.items():
                    if value and name != "epoch":
                        by_metric.setdefault(name, {})[step] = float(value)
    return {name: sorted(points.items()) for name, points in by_metric.items()}


def with_prefix(curves: Curves, prefix: str) -> Curves:
    """The curves named `<prefix><metric>`, by metric."""
    return {name.removeprefix(prefix): points for name, points in curves.items() if name.startswith(prefix)}
