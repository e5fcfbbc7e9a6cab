"""Datasets of the tests: the shipped sample, CSV text written to a file, generated data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from support import REPO

SAMPLE_DIR = REPO / "sample_data"


def write_csv(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.lstrip("\n"), encoding="utf-8")
    return path


def generate_dataset(out: Path, customers: int, bookings: int, seed: int = 7) -> Path:
    result = subprocess.run(
        [sys.executable, str(REPO / "sample_data" / "generate.py"), "--customers", str(customers),
         "--bookings", str(bookings), "--seed", str(seed), "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return out
