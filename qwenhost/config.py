"""Where qwenhost keeps its state on disk.

Everything lives under one home directory so a user (or a test) can relocate or wipe it
with a single environment variable.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

HOME_ENV = "QWENHOST_HOME"


def home_dir() -> Path:
    """Root of qwenhost's data: ``$QWENHOST_HOME`` or the platform's per-user data dir."""
    env = os.environ.get(HOME_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    # appauthor=False keeps Windows from nesting the dir under a vendor folder.
    return Path(platformdirs.user_data_dir("qwenhost", appauthor=False))


def models_dir() -> Path:
    """Directory holding model files (assembled catalog GGUFs and the Hugging Face cache)."""
    return home_dir() / "models"
