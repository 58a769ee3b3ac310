"""What a run prints: by default one line per stage, the progress of long stages, the results table and
where results.json is; `hydra.verbose=true` brings back every library's messages.

Hydra's job logging (conf/hydra/default.yaml) is the one console handler: Lightning's own handler would
print each of its messages a second time. The run's log file (<run>/<job>.log) keeps everything that
reaches the console, with timestamps.
"""

from __future__ import annotations

import logging
import os
import warnings

# Libraries whose INFO messages narrate their internals (devices found, contexts built, tips); their
# warnings still show.
CHATTY_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "lm_eval", "absl", "datasets",
                  "DeepSpeed", "torch.distributed", "accelerate")

# Warnings that say nothing about the user's run, each for a reason of ours:
QUIET_WARNINGS = (
    # Lightning's own pytree helper uses torch's deprecated LeafSpec check, once per training stage.
    r".*isinstance\(treespec, LeafSpec\)",
    # The frozen reference models of an objective (NPO, DPO, KL retain) are in eval mode on purpose.
    r"Found \d+ module\(s\) in eval mode",
)

# lm-eval's HFLM warns whenever it is given a model object instead of a hub name, which is the harness's
# documented way to score an in-memory model (unlearning/evaluation/harness.py), and assumes one
# process, which DataParallelHFLM corrects: nothing for the user to act on.
HARNESS_MODEL_OBJECT_MESSAGES = ("`pretrained` model kwarg is not of type `str`",
                                 "Passed an already-initialized model through `pretrained`")


class ConsoleFormatter(logging.Formatter):
    """The message alone; a warning or an error says so first."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return message if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {message}"


class DropMessages(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def hydra_verbose() -> bool:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.initialized() and bool(HydraConfig.get().verbose)


def set_up_console(verbose: bool) -> None:
    """Set up the console for a run, once its modules are imported. `verbose`: print everything."""
    if "DS_ACCELERATOR" not in os.environ:
        import torch

        if not torch.cuda.is_available():  # DeepSpeed, imported later, warns when it has to find that out
            os.environ["DS_ACCELERATOR"] = "cpu"
    for name in list(logging.root.manager.loggerDict):
        if name == "lightning" or name.startswith("lightning."):
            # Lightning adds its own handler when it is imported before Hydra's logging is set up.
            logger = logging.getLogger(name)
            logger.handlers.clear()
            logger.propagate = True
    if verbose:
        return
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    harness = logging.getLogger("lm_eval.models.huggingface")
    if not any(isinstance(f, DropMessages) for f in harness.filters):  # once, however many sweep jobs
        harness.addFilter(DropMessages(HARNESS_MODEL_OBJECT_MESSAGES))
    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    import datasets

    datasets.disable_progress_bars()  # "Generating train split" of the harness's local tasks

