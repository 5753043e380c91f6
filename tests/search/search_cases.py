"""Shared spaces of the search tests: variants of `eos_25` (benchmarks/search_25.deos, the EOS
space on the embedded model) with few steps."""

from __future__ import annotations

from pathlib import Path

from deos_dsl.frontend import ir, load_spaces

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "search_25.deos"


def space_text(budget: str = "25%", steps: int = 4, relaxation: str = "hard_concrete", body: str = "",
               policy: str = "") -> str:
    """A space `small` extending `eos_25`, with `body` added to it and `policy` to its policy."""
    return (f'import "{BENCHMARK}"\n\nspace small extends eos_25 {{\n{body}'
            f"  constraint tokens.mean <= {budget}\n  policy {{\n    steps: {steps}\n    relaxation: {relaxation}\n"
            f"{policy}  }}\n}}\n")


def write_space(tmp: Path, **kwargs: object) -> Path:
    path = tmp / "space.deos"
    path.write_text(space_text(**kwargs))  # type: ignore[arg-type]
    return path


def load_space(tmp: Path, **kwargs: object) -> ir.Space:
    (space,) = load_spaces(write_space(tmp, **kwargs))
    return space
