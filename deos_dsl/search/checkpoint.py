"""Search checkpoints: all a search needs to continue bit for bit, written atomically.

`checkpoint.pt` holds `{"format", "step", "modules", "optimizer", "lagrangian", "usefulness"}`:
the number of steps done, every site module's state dict, the optimiser's and the
multipliers' state and the running usefulness estimates. Nothing else is needed: a step's
data is a function of (seed, rank, step) and the gate noise of (seed, step) alone (`loop.step_noise`).
It is written to a temporary file and renamed (`deos_dsl.files.write_atomically`), so a kill
leaves the previous checkpoint or the new one, never a torn file; it is read with
`torch.load(weights_only=True)` (tensors, numbers, strings, lists and dicts only: never an
arbitrary unpickled object). A missing, unreadable or malformed file is a `SearchError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from deos_dsl.errors import SearchError, first_line
from deos_dsl.files import write_atomically

CHECKPOINT = "checkpoint.pt"
FORMAT = 1
KEYS = {"format": int, "step": int, "modules": dict, "optimizer": dict, "lagrangian": dict, "usefulness": dict}


def save_checkpoint(out: Path, state: dict[str, Any]) -> None:
    """Write `state` (the `KEYS`) to `out/checkpoint.pt` atomically."""
    write_atomically(out / CHECKPOINT, lambda temp: torch.save({"format": FORMAT, **state}, temp))


def load_checkpoint(out: Path) -> dict[str, Any]:
    """The checkpoint in `out`, validated (module docstring); raises `SearchError`."""
    path = out / CHECKPOINT
    if not path.is_file():
        raise SearchError(f"no checkpoint to resume from: {path} does not exist",
                          "point --out at the directory of an earlier search, or start again without --resume "
                          "(into a new or emptied --out)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  (torch raises many types for torn or foreign files)
        raise SearchError(f"checkpoint {path} is corrupt or not a deos checkpoint ({first_line(error)[:200]})",
                          "delete it and run the search again without --resume") from None
    bad = [key for key, kind in KEYS.items() if not isinstance(state, dict) or not isinstance(state.get(key), kind)]
    if bad or state["format"] != FORMAT:
        what = f"missing or malformed {', '.join(bad)}" if bad else f"format {state['format']}, expected {FORMAT}"
        raise SearchError(f"checkpoint {path} is not a deos search checkpoint ({what})",
                          "delete it and run the search again without --resume")
    return state
