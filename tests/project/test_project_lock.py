"""The lock (`requirements.lock`): it pins every declared dependency inside its declared range, its
header is the command that reproduces it, and the environment the suite runs in IS the lock
(scripts/setup-env.sh installs through it), except in the drift check, which says so."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
_spec = importlib.util.spec_from_file_location("env_check", ROOT / "scripts" / "env_check.py")
env_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(env_check)


def _declared() -> list[Requirement]:
    """deos's dependencies, its test extras and its build backend, as pyproject.toml declares them."""
    with open(ROOT / "pyproject.toml", "rb") as handle:
        pyproject = tomllib.load(handle)
    project = pyproject["project"]
    texts = project["dependencies"] + project["optional-dependencies"]["test"] + pyproject["build-system"]["requires"]
    return [Requirement(text) for text in texts]


def _check(*arguments: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, ROOT / "scripts" / "env_check.py", *map(str, arguments)],
                          capture_output=True, text=True, check=False)


def test_the_lock_pins_every_declared_dependency_inside_its_range():
    """A range edited in pyproject.toml without `bash scripts/lock.sh` fails here."""
    pins = env_check.read_lock(LOCK)
    for requirement in _declared():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is declared but not locked: run bash scripts/lock.sh"
        assert requirement.specifier.contains(pins[name], prereleases=True), (name, str(pins[name]), str(requirement))


def test_the_lock_header_is_the_command_that_reproduces_it():
    header = LOCK.read_text(encoding="utf-8").splitlines()[:2]
    assert re.fullmatch(r"#\s+bash scripts/lock\.sh --as-of \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", header[1]), header
    assert all("--hash=sha256:" in block for block in re.split(r"\n(?=[a-z0-9])", LOCK.read_text())[1:])


@pytest.mark.skipif(bool(os.environ.get("DEOS_UNLOCKED")), reason="the drift check runs outside the lock on purpose")
def test_this_environment_is_the_lock():
    """`pip freeze` equals the lock; on a GPU machine, but for its own CUDA torch."""
    machine_torch = ("--except", "torch", "--ignore-extra") if torch.version.cuda else ()
    result = _check(LOCK, *machine_torch)
    assert result.returncode == 0, result.stdout
    assert result.stdout.startswith("environment == requirements.lock")


def test_env_check_names_every_kind_of_difference(tmp_path: Path):
    pins = env_check.read_lock(LOCK)
    lock = tmp_path / "requirements.lock"
    wrong = {**{name: str(version) for name, version in pins.items() if name != "rich"},
             "sympy": "0.1", "not-a-real-package": "1.0"}
    lock.write_text("".join(f"{name}=={version} \\\n    --hash=sha256:00\n" for name, version in wrong.items()))
    result = _check(lock)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    installed = env_check.installed()
    assert f"requirements.lock: another version: sympy=={installed['sympy']} (lock: 0.1)" in lines
    assert "requirements.lock: missing: not-a-real-package==1.0" in lines
    assert f"requirements.lock: not in the lock: rich=={installed['rich']}" in lines
    assert _check(lock, "--extras").stdout.split() == sorted({"rich"} | (set(installed) - set(pins) - {"deos", "pip"}))
    drift = _check(LOCK, "--drift", lock).stdout.splitlines()
    assert drift[0] == "3 package(s) resolve otherwise than requirements.lock:"
    assert f"  sympy: {pins['sympy']} -> 0.1" in drift and f"  rich: {pins['rich']} -> (not resolved)" in drift
    assert set(_check("--declared").stdout.split()) == {canonicalize_name(r.name) for r in _declared()} - {"setuptools", "wheel"}


def test_a_machine_torch_outside_the_tested_range_is_named():
    have = {"torch": env_check.Version("2.11.0+cu130"), "rich": env_check.Version("1.0")}
    (warning,) = env_check.outside_range({"torch"}, have)
    assert warning.startswith("torch==2.11.0+cu130 is outside the tested range `torch>=")
    assert env_check.outside_range({"torch"}, {"torch": env_check.read_lock(LOCK)["torch"]}) == []


_spec_missing = importlib.util.spec_from_file_location("missing_from_lock", ROOT / "scripts" / "missing_from_lock.py")
# registered before it runs: its dataclass looks its module up
missing_from_lock = sys.modules["missing_from_lock"] = importlib.util.module_from_spec(_spec_missing)
_spec_missing.loader.exec_module(missing_from_lock)


def test_the_gpu_check_installs_what_deos_needs_and_the_machine_lacks(monkeypatch: pytest.MonkeyPatch):
    # the GPU machine has its own torch, transformers and huggingface-hub (older releases), no
    # lark or pydantic: it must get pydantic's own dependencies too, and nothing that only the
    # lock's NEWER huggingface-hub / transformers need (there is no wheel of those on that machine)
    lacking = {"lark", "interegular", "pydantic", "pydantic-core", "annotated-types", "typing-inspection",
               "httpx2", "httpcore2", "kernels", "tomlkit", "truststore", "torch"}
    monkeypatch.setattr(missing_from_lock, "installed", lambda name: name not in lacking)
    needed = missing_from_lock.needed(missing_from_lock.entries(LOCK))
    assert {entry.name for entry in needed} == lacking - {"httpx2", "httpcore2", "kernels", "tomlkit", "truststore", "torch"}
    assert all(entry.text.startswith(f"{entry.name}==") and "--hash=sha256:" in entry.text for entry in needed)
