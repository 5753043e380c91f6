"""Print the entries of a hashed lock (`requirements.lock`) whose package is not installed in
this Python at all, for `pip install --no-deps --require-hashes -r`: what a GPU machine, which
keeps its own torch and transformers, lacks of deos's closure (scripts/gpu-check.sh). Torch and
the packages of its CUDA build are never printed: the machine's are used.

    python scripts/missing_from_lock.py requirements.lock > missing.txt
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

KEPT = re.compile(r"^(torch|nvidia-.*|triton)$")  # the machine's CUDA torch and its libraries


def entries(lock: Path) -> list[tuple[str, str]]:
    """(normalised name, entry text with its hash lines) of every pinned package of `lock`."""
    found, current = [], []
    for line in lock.read_text(encoding="utf-8").splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            if current:
                found.append(current)
            current = [line]
        elif current and line.strip().startswith("--hash"):
            current.append(line)
    if current:
        found.append(current)
    return [(re.split(r"[=<> ]", lines[0])[0].lower().replace("_", "-"), "\n".join(lines)) for lines in found]


def installed(name: str) -> bool:
    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False


def main() -> None:
    for name, text in entries(Path(sys.argv[1])):
        if not KEPT.match(name) and not installed(name):
            print(text.rstrip(" \\"))


if __name__ == "__main__":
    main()
