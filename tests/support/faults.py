"""What the fault tests of every stage share: the sample's row counts, error lines, and a
stage script started while the test holds its advisory lock."""

from __future__ import annotations

from contextlib import contextmanager

import psycopg2

import transform_load_csv_data as load_stage
from support.database import Observer, query, wait_until
from support.datasets import SAMPLE_DIR
from support.stages import stage_env, start_stage_script

LOADER = "transform_load_csv_data.py"
EXPORTER = "batch_transfer_data_to_cloud_storage.py"
SAMPLE_COUNTS = {"customer": 201, "destination": 51, "booking": 203}
BOOKING_CSV = (SAMPLE_DIR / "booking.csv").read_bytes()


def error_lines(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


def loaded_sample(url: str) -> None:
    """The sample loaded by stage 3 into the database the environment names."""
    assert load_stage.main(["--data-dir", str(SAMPLE_DIR), "--rejects-dir", "rejects"]) == 0
    assert counts(url) == SAMPLE_COUNTS


def counts(url: str) -> dict[str, int]:
    return {t: query(url, f"SELECT count(*) FROM {t}")[0][0] for t in SAMPLE_COUNTS}


@contextmanager
def waiting_for_the_lock(url: str, key: int, script: str, args: list[str], application: str, tmp_path):
    """`script` started while the test holds the advisory lock `key`, once it waits for it:
    (the process, an Observer of the database, the holder's connection, to unlock early).
    The lock is let go on leaving."""
    holder = psycopg2.connect(url)
    holder.autocommit = True
    observer = Observer(url)
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (key,))
        process = start_stage_script(script, args, stage_env(url), tmp_path)
        wait_until(lambda: observer.waiting_on_advisory(key, application), f"{script} to wait", timeout=60)
        yield process, observer, holder
    finally:
        holder.close()
        observer.close()
