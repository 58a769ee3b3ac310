"""Config nodes -> objects, with the user's errors kept readable."""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate

from unlearning.errors import UnlearningError


def build(node: Any, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate`, re-raising our own bad-input errors unwrapped so the CLI can print
    their one line (Hydra wraps whatever a target raises in a multi-line InstantiationException)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        if isinstance(error.__cause__, UnlearningError):
            raise error.__cause__ from None
        raise
