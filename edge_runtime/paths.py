"""Where the toolkit's folders are: one rule for every command.

- From a source checkout (the folder holding ``pyproject.toml`` beside ``edge_runtime/``): ``models/``,
  ``runs/``, ``artifacts/`` and the cache (``.cache/``) are the checkout's, and the shared data set is
  ``../shared`` beside it.
- From an installed package: ``models/``, ``runs/`` and ``artifacts/`` are the current folder's, the
  cache is per user (``$XDG_CACHE_HOME/fer-edge``, else ``~/.cache/fer-edge``), and the data set must be
  named (``--data`` or ``$FER_DATA``).
- ``$FER_EDGE_CACHE`` moves the cache in both cases (the systemd unit puts it in /var/cache/fer-edge).
"""
from __future__ import annotations

import os
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parents[1]  # holds edge_runtime/, train/, ...: a checkout or site-packages
CACHE_ENV = "FER_EDGE_CACHE"


def checkout() -> Path | None:
    """The source checkout this code runs from, or None for an installed package."""
    return SOURCE_ROOT if (SOURCE_ROOT / "pyproject.toml").is_file() else None


def work_root() -> Path:
    """Where models/, runs/ and artifacts/ resolve: the checkout, else the current folder."""
    return checkout() or Path.cwd()


def cache_dir(*parts: str) -> Path:
    """A folder of the cache (not created): $FER_EDGE_CACHE, the checkout's .cache/, or the user's."""
    base = os.environ.get(CACHE_ENV)
    if not base:
        repo = checkout()
        base = str(repo / ".cache") if repo else os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fer-edge")
    return Path(base).joinpath(*parts)


def shared_dir(*parts: str) -> Path:
    """The shared folder beside a checkout (../shared: the data set, the YuNet models)."""
    return work_root().parent.joinpath("shared", *parts)
