"""Pieces the command-line tools share."""
from __future__ import annotations

import argparse
from pathlib import Path


def path_argument(text: str) -> Path:
    """An argparse ``type`` for paths: an empty one (``--out ""``, an unset shell variable) is an error,
    where ``Path("")`` would quietly mean the working folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; give a file or folder (\".\" for the working folder)")
    return Path(text)
