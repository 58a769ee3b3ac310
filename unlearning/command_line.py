"""What the Hydra console scripts check on the raw command line, before Hydra writes `.hydra/` into the
run folder: no secret of the environment pasted into an override (it would be saved there), no config
group option reaching outside conf/ with `..`, and one run at a time in a run folder (`lock_run_folder`;
a sweep folder: `SweepFolderLock`, a Hydra callback).
`redact_secrets` masks a secret that reached `.hydra/` another way (a user's own config file).
`hydra_errors_in_one_line` makes Hydra's own refusals (composition, override syntax) one line too."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path, PurePath
from typing import Any, Iterator, Sequence

from filelock import FileLock, Timeout
from hydra.experimental.callback import Callback
from hydra.errors import CompactHydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from unlearning.errors import MAX_QUOTED, ConfigError, quote

SECRET_VARIABLES = ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
SHORTEST_SECRET = 8  # shorter values are no real token, and would match innocent text
RUN_LOCK = ".run.lock"  # in the run folder: held by the run writing there
NO_RUN_FLAGS = {"--cfg", "-c", "--help", "-h", "--hydra-help", "--info", "-i", "--resolve"}  # Hydra writes nothing
MULTIRUN_FLAGS = {"-m", "--multirun"}  # each job has its own folder


def environment_secrets() -> dict[str, str]:
    """The secrets set in the environment: variable -> value."""
    return {name: value for name in SECRET_VARIABLES if len(value := os.environ.get(name, "")) >= SHORTEST_SECRET}


def without_secrets(text: str) -> str:
    for name, secret in environment_secrets().items():
        text = text.replace(secret, f"<${name}>")
    return text


def override_key(argument: str) -> str | None:
    """`model` of `+model=x`, `~model`, `model@alias=x`; None for a flag."""
    if argument.startswith("-") or "=" not in argument:
        return None
    return argument.split("=", 1)[0].lstrip("+~").split("@", 1)[0]


def check_hydra_flags(arguments: Sequence[str]) -> None:
    """Hydra's own flags (`--cfg`, `--info`, ...) through Hydra's own parser, whose usage errors argparse
    prints after the whole usage: here they are one ConfigError line."""
    from hydra._internal.utils import get_args_parser

    def refuse(message: str):
        raise ConfigError(message)

    parser = get_args_parser()
    parser.error = refuse
    parser.parse_args(arguments)


def check_command_line(arguments: Sequence[str], config_dir: str) -> None:
    """Raises ConfigError with one line for a bad Hydra flag, an override holding a secret or a group
    option with `..`."""
    check_hydra_flags(arguments)
    for position, argument in enumerate(arguments, 1):
        key = override_key(argument)
        for name, secret in environment_secrets().items():
            if secret in argument:
                raise ConfigError(f"{key or f'argument {position}'} holds the value of ${name}; valid: secrets stay "
                                  f"in the environment (${{oc.env:{name}}} where a config needs one)")
        if key is None:
            continue
        if len(key) > MAX_QUOTED:  # no config has such a key; Hydra would fail on it with a traceback
            raise ConfigError(f"{quote(key)} is not a config key (too long); valid: `unlearn --cfg job` shows the keys")
        group = Path(config_dir) / key
        if group.is_dir() or key.startswith("hydra/"):
            value = argument.split("=", 1)[1]
            options = sorted(path.stem for path in group.glob("*.yaml")) if group.is_dir() else []
            for option in value.split(","):
                if ".." in PurePath(option.strip()).parts or option.strip().startswith(("/", "\\", "~")):
                    raise ConfigError(f"{key}={quote(value)} leaves the config group {key}/; valid: "
                                      f"{', '.join(options) or 'an option of the group'}")
            if value.strip() == "null" and not argument.startswith("~"):  # Hydra raises a bare ValueError here
                raise ConfigError(f"{key}=null: a config group is turned off with ~{key}; valid: ~{key}, "
                                  f"{', '.join(options) or 'an option of the group'}")
            # hydra/ groups also hold Hydra's and its plugins' own options (hydra/launcher=basic)
            if only_shipped_configs(arguments) and not key.startswith("hydra/") and group.is_dir() \
                    and not sweep_syntax(value):
                for option in value.split(","):
                    if option != "" and not (group / f"{option}.yaml").is_file():
                        raise ConfigError(f"{key}={quote(option)} is not an option of the config group {key}/; "
                                          f"valid: {', '.join(options)}")


def only_shipped_configs(arguments: Sequence[str]) -> bool:
    """No other config folder is searched (`--config-dir`, `hydra.searchpath`): conf/ has every option."""
    return not any(argument.startswith(("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn"))
                   or "searchpath" in argument for argument in arguments)


def sweep_syntax(value: str) -> bool:
    """`choice(...)`, `range(...)`, `glob(*)`, interpolations: Hydra's to expand, not an option name."""
    return any(character in value for character in "()*$[]{}")


def run_folder(arguments: Sequence[str]) -> Path | None:
    """The `hydra.run.dir` a single run writes to, when the command line sets it."""
    if MULTIRUN_FLAGS & set(arguments) or NO_RUN_FLAGS & set(arguments):
        return None
    given = [argument.split("=", 1)[1] for argument in arguments if override_key(argument) == "hydra.run.dir"]
    return Path(given[-1]).expanduser() if given else None


def launched_rank() -> int:
    """This process's rank in a launch that starts every rank with the same command line (torchrun: RANK;
    SLURM tasks: SLURM_PROCID; Lightning's launcher re-running the command: LOCAL_RANK); 0 otherwise."""
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def hold_folder(folder: Path, key: str, holder: str) -> FileLock:
    """`<folder>/.run.lock`, taken without waiting: one `holder` (a run, a sweep) at a time writes to
    `folder`; a one-line ConfigError naming `key` when another process holds it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"{key}={folder} cannot be created: {error.strerror or error}") from None
    lock = FileLock(str(folder / RUN_LOCK), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise ConfigError(f"{key}={folder} is in use by another {holder} (it holds {folder / RUN_LOCK}); "
                          f"valid: a folder no running {holder} writes to") from None
    except OSError as error:
        raise ConfigError(f"{key}={folder} cannot be locked: {error.strerror or error}") from None
    return lock


@contextmanager
def lock_run_folder(arguments: Sequence[str]) -> Iterator[None]:
    """Hold `<hydra.run.dir>/.run.lock` for the run: a second run on the same folder is refused before
    Hydra touches it (two runs would mix their configs, checkpoints and results in one folder)."""
    folder = run_folder(arguments)
    if folder is None or launched_rank() > 0:  # the ranks of one launch share the folder: rank 0 holds it
        yield
        return
    lock = hold_folder(folder, "hydra.run.dir", "run")
    try:
        yield
    finally:
        lock.release()


class SweepFolderLock(Callback):
    """One launch at a time in a sweep folder (`hydra.sweep.dir`, usually set by an experiment config,
    not on the command line): a second launch of the same sweep would run the same jobs in the same job
    folders at once. The launching process holds it from the multirun's start to its end."""

    def __init__(self) -> None:
        self.lock: FileLock | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if launched_rank() > 0:
            return
        try:
            self.lock = hold_folder(Path(config.hydra.sweep.dir), "hydra.sweep.dir", "sweep")
        except ConfigError as error:
            # Hydra turns a callback's exception into a warning and starts the sweep anyway: only an exit
            # (a SystemExit, which it does not catch) refuses it before any job runs
            sys.exit(f"error: {error}")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.lock is not None:
            self.lock.release()


def redact_secrets() -> None:
    """Mask every secret of the environment in the run folder's `.hydra/` files (Hydra saved them
    before the task runs; `prepare_config` then refuses the config that held one)."""
    from hydra.core.hydra_config import HydraConfig

    secrets = environment_secrets()
    if not secrets or not HydraConfig.initialized():
        return
    for file in (Path(HydraConfig.get().runtime.output_dir) / ".hydra").glob("*"):
        if file.is_file():
            text = file.read_text(errors="replace")
            if without_secrets(text) != text:
                file.write_text(without_secrets(text))


FULL_ERROR = "HYDRA_FULL_ERROR"  # Hydra raises its errors instead of printing them over several lines


@contextmanager
def hydra_errors_in_one_line(arguments: Sequence[str]) -> Iterator[None]:
    """Hydra prints what it refuses (an unknown key or option, bad override syntax, an instantiation
    error) on several lines with a hint about HYDRA_FULL_ERROR, then exits; here Hydra raises it (its
    HYDRA_FULL_ERROR switch, set while inside) and it becomes one ConfigError line. HYDRA_FULL_ERROR=1 or
    `hydra.verbose=true` given by the user keep Hydra's own report."""
    verbose = any(override_key(argument) == "hydra.verbose" and argument.split("=", 1)[1].lower()
                  not in ("false", "null", "[]", "") for argument in arguments)
    if verbose or os.environ.get(FULL_ERROR):
        yield
        return
    os.environ[FULL_ERROR] = "1"
    try:
        yield
    except CompactHydraException as error:
        raise ConfigError(hydra_error_message(error)) from None
    finally:
        os.environ.pop(FULL_ERROR, None)


def hydra_error_message(error: CompactHydraException) -> str:
    """Hydra's message on one line, naming the override and, where Hydra knows them, the valid choices."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if isinstance(error, OverrideParseException):
        return f"{quote(error.override)} is not a valid override: {first}; valid: key=value, +key=value, ~key " \
               "(https://hydra.cc/docs/advanced/override_grammar/basic)"
    if isinstance(error, MissingConfigException) and error.options:
        return f"{first}; valid: {', '.join(error.options)}"
    cause = error.__cause__
    if isinstance(cause, OmegaConfBaseException) and cause.full_key:
        parent = cause.parent_node
        if isinstance(parent, DictConfig) and cause.key is not None and cause.key not in parent:
            keys = [str(key) for key in parent if not str(key).startswith("_") and key != "hydra"]
            return (f"{cause.full_key} is not a key of {cause.full_key.rpartition('.')[0] or 'the config'}; "
                    f"valid: {', '.join(keys)} (or +{cause.full_key}=<value> to add it)")
        return f"{' '.join(str(error).split())}: {str(cause).splitlines()[0]}"
    return " ".join(str(error).split())
