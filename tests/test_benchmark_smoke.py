"""The benchmark script (tests/benchmarks/run.py) runs end to end on a tiny dataset.

Only that it works and reports every figure: the numbers themselves mean nothing at this
size (process start-up dominates) and are not compared with anything.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from support import REPO

RUN = REPO / "tests" / "benchmarks" / "run.py"
FIGURES = ("seconds", "floor_seconds", "ratio", "peak_rss_mb", "rows")


def test_benchmark_smoke_reports_every_stage_and_floor(tmp_path):
    out = tmp_path / "figures.json"
    # Not under pytest's basetemp, which a concurrent session may prune under a running
    # server (as in conftest.pg_admin_url).
    workdir = Path(tempfile.mkdtemp(prefix="waddle-bench-smoke-"))
    try:
        run_and_check(workdir, out)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_and_check(workdir: Path, out: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(RUN), "--bookings", "1000", "--naive-rows", "1000", "--fast-db",
         "--workdir", str(workdir), "--json", str(out)],
        capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(out.read_text())
    for stage in ("load", "reload", "recleanse", "export", "lambda", "naive"):
        for name in FIGURES:
            assert figures[stage][name] > 0, (stage, name, figures[stage])
    assert figures["load"]["rows"] == 1000 + 1000 + 50
    assert figures["lambda"]["rows"] == 1000
    assert figures["naive"]["rows"] == figures["load"]["rows"]
    assert figures["machine"]["cpus"] >= 1
    # The named Athena query in DuckDB over the Parquet export: checked against the Lambda's
    # metrics by the benchmark itself (else it exits 1), and the bytes it reads reported.
    duck = figures["duckdb"]
    assert duck["rows"] == 1000 and duck["seconds"] > 0 and duck["peak_rss_mb"] > 0 and duck["equals_lambda"]
    assert duck["tables"]["booking"]["columns_read"] == ["destination_id", "number_of_passengers", "total_booking_value"]
    assert duck["tables"]["destination"]["columns_read"] == ["destination_id", "destination", "country"]
    assert 0 < duck["scanned_bytes"] < duck["stored_bytes"] < duck["export_bytes"]
    for stage in ("load", "reload", "recleanse", "export", "lambda", "duckdb"):
        assert f"\n{stage} " in result.stdout  # a row of the printed table
    # Services stopped and everything the run wrote removed (no --keep).
    assert list(workdir.iterdir()) == []


def test_benchmark_smoke_a_server_setting_is_refused_unless_plain(tmp_path):
    import pytest

    from waddle_common import local_services

    with pytest.raises(ValueError, match="not a server setting"):  # it would reach pg_ctl's options
        local_services.EmbeddedPostgres(tmp_path / "data", settings={"shared_buffers": "1GB -c fsync=off"})
    assert local_services.EmbeddedPostgres(tmp_path / "data", settings={"max_wal_size": "16GB"}).settings
