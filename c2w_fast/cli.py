"""Pieces the command-line tools share."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

INTERRUPTED = 130  # exit status after Ctrl-C: 128 + SIGINT, as a shell reports a process it stopped


def path_argument(text: str) -> Path:
    """An argparse ``type`` for paths: an empty one (``--out ""``, an unset shell variable) is an error,
    where ``Path("")`` would quietly mean the working folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; give a file or folder (\".\" for the working folder)")
    return Path(text)


def nearest_existing(path: Path) -> Path:
    """``path`` or its nearest parent that exists (the root always does): where writing to ``path``
    would begin, after any missing folders are made."""
    return next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())


def may_write_in(folder: Path) -> bool:
    """Whether this user may create files in the existing ``folder``."""
    return os.access(folder, os.W_OK | os.X_OK)
