"""Print the entries of a hashed lock (`requirements.lock`) that deos needs and this Python lacks,
for `pip install --no-deps --require-hashes -r`: what a GPU machine, which keeps its own torch,
transformers and the rest of its image, lacks of deos's closure (scripts/gpu-check.sh).

A package is needed when it is not installed and deos requires it directly (`# via deos`) or a
NEEDED package requires it (the lock's `# via` lines, followed to a fixed point). A package only
the machine's own installed packages require is not: their installed versions already have what
they need (transformers 5.25's `kernels` is no concern of a machine whose transformers is 5.17).
Torch and the packages of its CUDA build are never printed: the machine's are used.

    python scripts/missing_from_lock.py requirements.lock > missing.txt
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

KEPT = re.compile(r"^(torch|nvidia-.*|triton)$")  # the machine's CUDA torch and its libraries
PROJECT = "deos"


@dataclass(frozen=True)
class Entry:
    """One pinned package of the lock: its normalised name, its text (pin and hashes) and the
    names of the packages that require it (`PROJECT` for a direct dependency)."""

    name: str
    text: str
    required_by: tuple[str, ...]


def normalised(name: str) -> str:
    return re.split(r"[=<> \[]", name.strip())[0].lower().replace("_", "-")


def entries(lock: Path) -> list[Entry]:
    """Every pinned package of `lock`, with the parents named by its `# via` comment."""
    blocks: list[list[str]] = []
    for line in lock.read_text(encoding="utf-8").splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            blocks.append([line])
        elif blocks:
            blocks[-1].append(line)
    found = []
    for block in blocks:
        pinned = [line for line in block if not line.strip().startswith("#")]
        comments = [line.strip().lstrip("#").strip() for line in block if line.strip().startswith("#")]
        names = [c.removeprefix("via").strip() for c in comments if c and c != "via"]
        parents = tuple(normalised(n) for n in names if n)
        found.append(Entry(normalised(block[0]), "\n".join(pinned).rstrip(" \\"), parents))
    return found


def installed(name: str) -> bool:
    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False


def needed(lock: list[Entry]) -> list[Entry]:
    """The entries deos needs that are not installed here, in lock order."""
    missing = {e.name for e in lock if not KEPT.match(e.name) and not installed(e.name)}
    wanted: set[str] = set()
    grew = True
    while grew:
        grew = False
        for entry in lock:
            if entry.name in missing and entry.name not in wanted:
                if any(p == PROJECT or p in wanted for p in entry.required_by):
                    wanted.add(entry.name)
                    grew = True
    return [e for e in lock if e.name in wanted]


def main() -> None:
    for entry in needed(entries(Path(sys.argv[1]))):
        print(entry.text)


if __name__ == "__main__":
    main()
