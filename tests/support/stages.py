"""Stage scripts as real processes: their environment, started or run to the end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from support import REPO
from support.database import libpq_env


def stage_env(database_url: str | None = None, **extra: str) -> dict[str, str]:
    """The environment of a stage subprocess: the test's (already cleaned of pipeline
    variables by conftest), the database as libpq variables (no password on a command line)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.pop("DATABASE_URL", None)
    if database_url:
        env.update(libpq_env(database_url))
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def start_stage_script(script: str, args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(REPO / script), *args], env=env, cwd=cwd,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def run_stage_script(script: str, args: list[str], env: dict[str, str], cwd: Path, timeout: float = 120):
    return subprocess.run(
        [sys.executable, str(REPO / script), *args], env=env, cwd=cwd,
        capture_output=True, text=True, timeout=timeout,
    )
