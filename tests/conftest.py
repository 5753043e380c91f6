"""Suite-wide set-up. The tests write spaces into temporary folders that import the benchmark
spaces (`benchmarks/*.deos`) by absolute path; imports are confined (`docs/security.md`), so
that folder is allowed here the way a user allows one, with `DEOS_IMPORT_PATH`."""

from __future__ import annotations

import os
from pathlib import Path

os.environ["DEOS_IMPORT_PATH"] = str(Path(__file__).resolve().parents[1] / "benchmarks")
