"""Config nodes -> objects, with the user's errors kept readable; stable hashes of configs; the config folder."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from unlearning.errors import UnlearningError


def _config_dir() -> Path:
    """Hydra's config folder, a real folder in every install: unlearning/conf/ in an installed wheel
    (pyproject.toml maps the checkout's conf/ there), else conf/ beside the package (a checkout, which
    an editable install imports from)."""
    package = Path(__file__).resolve().parent
    installed, checkout = package / "conf", package.parent / "conf"
    return installed if (installed / "config.yaml").is_file() else checkout


CONFIG_DIR = str(_config_dir())


def build(node: Any, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate`, re-raising our own bad-input errors unwrapped so the CLI can print
    their one line (Hydra wraps whatever a target raises in a multi-line InstantiationException)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        if isinstance(error.__cause__, UnlearningError):
            raise error.__cause__ from None
        raise


def fingerprint(parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts (configs, records)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def config_fingerprint(cfg: DictConfig) -> str:
    """The hash of a run's resolved config less `resume`, which says how a run continues, not what it
    computes: what a saved model or a finished sweep job must match to be taken as this run's."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved.pop("resume", None)
    return fingerprint(resolved)
