"""Where ``filtag-kg sag`` writes, and reading it back without torch (for export and report)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ._io import read_json
from .errors import FiltagError

__all__ = ["SALIENCY_DIR", "SALIENCY_JSON", "read_saliency"]

SALIENCY_DIR = "saliency"
SALIENCY_JSON = "saliency.json"


def read_saliency(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """``RUN/saliency/saliency.json`` as ``filtag-kg sag`` wrote it, or ``None`` when absent.

    Raises:
        FiltagError: the file is not valid JSON, or not an object with a list of images.
    """
    path = Path(run_dir) / SALIENCY_DIR / SALIENCY_JSON
    if not path.is_file():
        return None
    try:
        doc = read_json(path)
    except ValueError as exc:
        raise FiltagError(f"{path} is not valid JSON ({exc}); run filtag-kg sag again") from None
    images = doc.get("images", []) if isinstance(doc, dict) else None
    if not isinstance(images, list) or not all(isinstance(r, dict) for r in images):
        raise FiltagError(f"{path} is not what filtag-kg sag writes (an object with a list of images); "
                          "run filtag-kg sag again")
    return doc
