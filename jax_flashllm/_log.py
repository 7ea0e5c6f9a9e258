"""The `jax_flashllm` logger and the one progress-bar helper every long step uses.

Bars go to stderr and only when it is a terminal, so logs of batch jobs and CI stay clean;
JAX_FLASHLLM_PROGRESS=0 turns them off everywhere, =1 forces them on.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Iterable, TypeVar

logger = logging.getLogger("jax_flashllm")

T = TypeVar("T")


def progress_enabled(show: bool | None = None) -> bool:
    """Whether a bar should be drawn: `show` if given, else the environment, else stderr is a TTY."""
    if show is not None:
        return bool(show)
    env = os.environ.get("JAX_FLASHLLM_PROGRESS")
    if env is not None and env.strip() != "":
        return env.strip().lower() not in ("0", "false", "no", "off")
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def progress(iterable: Iterable[T] | None = None, *, desc: str, total: int | None = None,
             unit: str = "it", show: bool | None = None):
    """A tqdm bar over `iterable` (or a manual bar when iterable is None), silent unless enabled."""
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=not progress_enabled(show),
                leave=False, dynamic_ncols=True)
