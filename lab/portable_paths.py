"""Make paths in committed result files machine-independent.

Results JSON written by benchmarks and experiments is committed, so absolute paths of the
machine that produced it (the project folder, the home folder, temporary folders) are rewritten
as ``.`` -relative, ``~``-relative or ``<tmp>`` before writing.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

_TMP = re.escape(tempfile.gettempdir().rstrip("/"))


def portable(text: str, project: Path | None = None) -> str:
    """`text` with the project folder as ``.``, the home folder as ``~`` and temp folders as ``<tmp>``."""
    root = str((project or Path.cwd()).resolve())
    text = text.replace(root + "/", "").replace(root, ".")
    text = text.replace(str(Path.home()) + "/", "~/")
    return re.sub(_TMP + r"/[^\s\"']*?(?=/|\"|\s|$)", "<tmp>", text)
