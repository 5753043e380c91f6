"""Compare the running Python environment with the lock (`requirements.lock`).

    python scripts/env_check.py [LOCK] [--except NAME ...] [--ignore-extra] [--extras] [--drift FILE] [--declared]

Prints one line per difference (missing, another version, not in the lock) and exits 1 when
there is any; otherwise prints `environment == LOCK (N packages)` and exits 0. `--except`
leaves packages the machine brings itself out (a GPU machine's CUDA torch), noting where one is
outside the range pyproject.toml declares (a warning: the suite was not run there); `--ignore-extra`
tolerates packages the lock does not name (a venv that sees the system's site-packages);
`--extras` only prints the names of installed packages the lock does not name, one per line
(what `scripts/setup-env.sh` uninstalls); `--drift FILE` compares the lock with another
resolution instead of the environment (what `scripts/test-latest.sh` reports), always exit 0;
`--declared` prints the names of the dependencies pyproject.toml declares, one per line.
deos itself and the venv's own pip are never compared.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
NEVER_COMPARED = frozenset({"deos", "pip"})
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)\s*(?:;(?P<marker>[^\\]+))?")


def read_lock(path: Path) -> dict[str, Version]:
    """Canonical name -> pinned version of every requirement of the lock that applies here."""
    pins: dict[str, Version] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = PIN.match(line)
        if match and (match["marker"] is None or Marker(match["marker"].strip()).evaluate()):
            pins[canonicalize_name(match["name"])] = Version(match["version"])
    return pins


def installed() -> dict[str, Version]:
    """Canonical name -> version of every distribution the interpreter imports (first on sys.path)."""
    found: dict[str, Version] = {}
    for dist in metadata.distributions():
        found.setdefault(canonicalize_name(dist.metadata["Name"]), Version(dist.version))
    return found


def declared() -> dict[str, Requirement]:
    """Canonical name -> requirement of every dependency pyproject.toml declares (test extras too)."""
    with open(ROOT / "pyproject.toml", "rb") as handle:
        project = tomllib.load(handle)["project"]
    texts = project["dependencies"] + [t for extra in project["optional-dependencies"].values() for t in extra]
    return {canonicalize_name(r.name): r for r in map(Requirement, texts)}


def outside_range(names: set[str], have: dict[str, Version]) -> list[str]:
    """A warning per installed package of `names` outside its declared range."""
    ranges = declared()
    return [f"{name}=={have[name]} is outside the tested range `{ranges[name]}`"
            for name in sorted(names) if name in have and name in ranges
            and not ranges[name].specifier.contains(have[name], prereleases=True)]


def differences(pins: dict[str, Version], have: dict[str, Version], skip: set[str], ignore_extra: bool) -> list[str]:
    """One human line per package whose installed state is not the lock's."""
    lines = []
    for name in sorted(set(pins) | set(have)):
        if name in skip or name in NEVER_COMPARED:
            continue
        if name not in have:
            lines.append(f"missing: {name}=={pins[name]}")
        elif name not in pins:
            if not ignore_extra:
                lines.append(f"not in the lock: {name}=={have[name]}")
        elif have[name] != pins[name]:
            lines.append(f"another version: {name}=={have[name]} (lock: {pins[name]})")
    return lines


def drift(pins: dict[str, Version], resolved: dict[str, Version]) -> list[str]:
    """One line per package that a resolution pins otherwise than the lock: `name: lock -> resolved`."""
    return [f"{name}: {pins.get(name, '(not locked)')} -> {resolved.get(name, '(not resolved)')}"
            for name in sorted(set(pins) | set(resolved)) if pins.get(name) != resolved.get(name)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lock", nargs="?", type=Path, default=ROOT / "requirements.lock")
    parser.add_argument("--except", dest="skip", action="append", default=[], metavar="NAME")
    parser.add_argument("--ignore-extra", action="store_true")
    parser.add_argument("--extras", action="store_true")
    parser.add_argument("--drift", type=Path, metavar="FILE")
    parser.add_argument("--declared", action="store_true")
    args = parser.parse_args(argv)
    if args.declared:
        for name in declared():
            print(name)
        return 0
    pins, have = read_lock(args.lock), installed()
    skip = {canonicalize_name(name) for name in args.skip}
    if args.drift:
        lines = drift(pins, read_lock(args.drift))
        print(f"{len(lines)} package(s) resolve otherwise than {args.lock.name}" + (":" if lines else ""))
        for line in lines:
            print(f"  {line}")
        return 0
    if args.extras:
        for name in sorted(set(have) - set(pins) - skip - NEVER_COMPARED):
            print(name)
        return 0
    for warning in outside_range(skip, have):
        print(f"warning: the machine's {warning}; expect failures (README, Dependencies)")
    lines = differences(pins, have, skip, args.ignore_extra)
    for line in lines:
        print(f"{args.lock.name}: {line}")
    if lines:
        print(f"environment != {args.lock.name}: {len(lines)} difference(s); run `bash scripts/setup-env.sh`")
        return 1
    excepted = f", {', '.join(sorted(skip))} excepted" if skip else ""
    print(f"environment == {args.lock.name} ({len(pins) - len(skip & set(pins))} packages{excepted})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
