"""Configuration: a nonsense setting is refused where configuration is read
(waddle_common.Settings), by every stage, in one line naming the variable, the allowed range
and the value given, with exit 2, before anything is fetched, read or connected."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from support import REPO
from waddle_common.local_services import free_port
from support.http_server import Reply

import batch_transfer_data_to_cloud_storage as export_stage
import download_dataset as download_stage
import transform_load_csv_data as load_stage
import waddle_common as common

# (variable, value, the refusal after "<stage>: error: ")
BAD_SETTINGS = [
    ("DOWNLOAD_RETRIES", "-1", "DOWNLOAD_RETRIES must be a whole number from 0 to 100, got '-1'"),
    ("DOWNLOAD_RETRIES", "1.5", "DOWNLOAD_RETRIES must be a whole number from 0 to 100, got '1.5'"),
    ("DOWNLOAD_RETRIES", "many", "DOWNLOAD_RETRIES must be a whole number from 0 to 100, got 'many'"),
    ("DOWNLOAD_RETRIES", "5000", "DOWNLOAD_RETRIES must be a whole number from 0 to 100, got '5000'"),
    ("DOWNLOAD_RETRIES", "\u0663", "DOWNLOAD_RETRIES must be a whole number from 0 to 100, got '\u0663'"),  # Arabic 3
    ("DOWNLOAD_RETRIES", "1_0", "DOWNLOAD_RETRIES must be a whole number from 0 to 100, got '1_0'"),
    ("DOWNLOAD_TIMEOUT", "0", "DOWNLOAD_TIMEOUT must be a number of seconds above 0 and at most 86400, got '0'"),
    ("DOWNLOAD_TIMEOUT", "-5", "DOWNLOAD_TIMEOUT must be a number of seconds above 0 and at most 86400, got '-5'"),
    ("DOWNLOAD_TIMEOUT", "nan", "DOWNLOAD_TIMEOUT must be a number of seconds above 0 and at most 86400, got 'nan'"),
    ("DOWNLOAD_TIMEOUT", "inf", "DOWNLOAD_TIMEOUT must be a number of seconds above 0 and at most 86400, got 'inf'"),
    ("DOWNLOAD_TIMEOUT", "1e10",
     "DOWNLOAD_TIMEOUT must be a number of seconds above 0 and at most 86400, got '1e10'"),
    ("DOWNLOAD_BACKOFF", "-1", "DOWNLOAD_BACKOFF must be a number of seconds from 0 to 3600, got '-1'"),
    ("DOWNLOAD_BACKOFF", "1e300", "DOWNLOAD_BACKOFF must be a number of seconds from 0 to 3600, got '1e300'"),
    ("PGCONNECT_TIMEOUT", "0", "PGCONNECT_TIMEOUT must be a whole number of seconds from 1 to 86400, got '0'"),
    ("PGCONNECT_TIMEOUT", "-1", "PGCONNECT_TIMEOUT must be a whole number of seconds from 1 to 86400, got '-1'"),
    ("PGCONNECT_TIMEOUT", "2.5", "PGCONNECT_TIMEOUT must be a whole number of seconds from 1 to 86400, got '2.5'"),
    ("PGCONNECT_TIMEOUT", "99999999999",
     "PGCONNECT_TIMEOUT must be a whole number of seconds from 1 to 86400, got '99999999999'"),
    ("EXPORT_BATCH_SIZE", "0", "EXPORT_BATCH_SIZE must be a whole number of 1 or more, got '0'"),
    ("EXPORT_BATCH_SIZE", "1e3", "EXPORT_BATCH_SIZE must be a whole number of 1 or more, got '1e3'"),
    ("EXPORT_COMPRESSION_LEVEL", "10", "EXPORT_COMPRESSION_LEVEL must be a whole number from 0 to 9, got '10'"),
    ("EXPORT_COMPRESSION_LEVEL", "-1", "EXPORT_COMPRESSION_LEVEL must be a whole number from 0 to 9, got '-1'"),
    ("MAX_REJECT_RATE", "1.5", "MAX_REJECT_RATE must be a share between 0 and 1 (0.10 = 10%), got '1.5'"),
    ("MAX_REJECT_RATE", "nan", "MAX_REJECT_RATE must be a share between 0 and 1 (0.10 = 10%), got 'nan'"),
    ("MAX_REJECT_RATE", "0.1_0", "MAX_REJECT_RATE must be a share between 0 and 1 (0.10 = 10%), got '0.1_0'"),
    ("MAX_REJECT_RATE", "\u0660.\u0665", "MAX_REJECT_RATE must be a share between 0 and 1 (0.10 = 10%), got '\u0660.\u0665'"),
    ("STRICT_SECURITY", "maybe", "STRICT_SECURITY must be 1 or 0, got 'maybe'"),
    ("DOWNLOAD_ALLOW_UNSIZED", "on", "DOWNLOAD_ALLOW_UNSIZED must be 0 or 1, got 'on'"),
    ("DOWNLOAD_ALLOW_UNSIZED", "01", "DOWNLOAD_ALLOW_UNSIZED must be 0 or 1, got '01'"),
    ("DOWNLOAD_ALLOW_UNSIZED", "+1", "DOWNLOAD_ALLOW_UNSIZED must be 0 or 1, got '+1'"),
]

STAGES = {
    "download": ("download_dataset", download_stage.main, []),
    "load": ("transform_load_csv_data", load_stage.main, ["--data-dir", "data"]),
    "export": ("batch_transfer_data_to_cloud_storage", export_stage.main, ["--date", "2024-05-01"]),
    "psql": ("psql", common.main, ["psql", "--", "-X", "-c", "SELECT 1"]),
}


@pytest.fixture
def configured(sample_dir, monkeypatch, tmp_path):
    """Every stage configured to do real work: sources, the sample files to load, a database
    and a bucket. None of the servers is listening: a stage that got as far as using one would
    fail with exit 1, not 2. (test_config_download_makes_no_request serves the sources.)"""
    for table in common.TABLES:
        monkeypatch.setenv(f"{table.upper()}_CSV_URL", f"http://127.0.0.1:{free_port()}/{table}.csv")
    monkeypatch.setenv("DOWNLOAD_DIR", str(tmp_path / "downloads"))
    monkeypatch.setenv("DATABASE_URL", f"postgresql://nobody@127.0.0.1:{free_port()}/none")
    monkeypatch.setenv("S3_BUCKET_NAME", "never-contacted")
    assert sample_dir == tmp_path / "data"  # the load's --data-dir data, from the test's folder


@pytest.mark.parametrize("stage", list(STAGES))
@pytest.mark.parametrize("name, value, message", BAD_SETTINGS,
                         ids=[f"{name}={value}" for name, value, _ in BAD_SETTINGS])
def test_config_nonsense_setting_is_refused_by_every_stage(configured, monkeypatch, tmp_path, capsys,
                                                           stage, name, value, message):
    monkeypatch.setenv(name, value)
    prog, main, argv = STAGES[stage]

    assert main(argv) == 2

    captured = capsys.readouterr()
    assert captured.err == f"{prog}: error: {message}\n"
    assert captured.out == ""
    assert not (tmp_path / "downloads").exists()
    assert not (tmp_path / "rejects").exists()


@pytest.mark.parametrize("name, value", [("DOWNLOAD_RETRIES", "-1"), ("DOWNLOAD_TIMEOUT", "0"),
                                         ("DOWNLOAD_TIMEOUT", "-5"), ("DOWNLOAD_BACKOFF", "-1")])
def test_config_download_makes_no_request(http_server, sample_dir, monkeypatch, tmp_path, capsys, name, value):
    # Before: DOWNLOAD_RETRIES=-1 made no request and reported an "empty body" (exit 1);
    # DOWNLOAD_TIMEOUT=0 or -5 failed with "unexpected ValueError" (exit 1).
    for table in common.TABLES:
        http_server.routes[f"/{table}.csv"] = [Reply(200, (sample_dir / f"{table}.csv").read_bytes())]
        monkeypatch.setenv(f"{table.upper()}_CSV_URL", f"{http_server.base_url}/{table}.csv")
    monkeypatch.setenv(name, value)

    assert download_stage.main(["--dest", str(tmp_path / "downloads")]) == 2

    assert capsys.readouterr().err.startswith(f"download_dataset: error: {name} must be ")
    assert http_server.hits == {}
    assert not (tmp_path / "downloads").exists()


@pytest.mark.parametrize("name", ["DOWNLOAD_DIR", "REJECTS_DIR"])
@pytest.mark.parametrize("stage", list(STAGES))
def test_config_folder_that_is_a_file_is_refused(configured, monkeypatch, tmp_path, capsys, stage, name):
    in_the_way = tmp_path / "in-the-way"
    in_the_way.write_text("not a folder\n")
    monkeypatch.setenv(name, str(in_the_way))
    prog, main, argv = STAGES[stage]

    assert main(argv) == 2

    assert capsys.readouterr().err == (
        f"{prog}: error: {name} must be a folder or not exist yet, but {in_the_way} is not a folder\n")
    assert in_the_way.read_text() == "not a folder\n"


def test_config_folder_inside_a_file_is_refused(configured, monkeypatch, tmp_path, capsys):
    in_the_way = tmp_path / "in-the-way"
    in_the_way.write_text("")
    monkeypatch.setenv("DOWNLOAD_DIR", str(in_the_way / "sub" / "dir"))

    assert download_stage.main([]) == 2

    assert capsys.readouterr().err == (
        f"download_dataset: error: DOWNLOAD_DIR must be a folder or not exist yet, but {in_the_way} "
        f"(part of {in_the_way / 'sub' / 'dir'}) is not a folder\n")


def test_config_dangling_symlink_folder_is_refused(configured, monkeypatch, tmp_path, capsys):
    link = tmp_path / "gone"
    link.symlink_to(tmp_path / "nowhere")
    monkeypatch.setenv("REJECTS_DIR", str(link))

    assert load_stage.main(["--data-dir", "data"]) == 2

    assert capsys.readouterr().err == (
        f"transform_load_csv_data: error: REJECTS_DIR must be a folder or not exist yet, but {link} is not a folder\n")


def test_config_limits_and_blank_values_are_accepted(tmp_path):
    (tmp_path / "exists").mkdir()
    settings = common.Settings.from_env({
        "DOWNLOAD_RETRIES": "0", "DOWNLOAD_TIMEOUT": "0.5", "DOWNLOAD_BACKOFF": "0", "PGCONNECT_TIMEOUT": " 1 ",
        "EXPORT_BATCH_SIZE": "1", "EXPORT_COMPRESSION_LEVEL": "0", "MAX_REJECT_RATE": "1",
        "DOWNLOAD_DIR": str(tmp_path / "exists"), "REJECTS_DIR": str(tmp_path / "not-yet" / "rejects"),
    })
    assert (settings.download_retries, settings.download_timeout, settings.download_backoff,
            settings.pg_connect_timeout, settings.export_batch_size, settings.export_compression_level,
            settings.max_reject_rate) == (0, 0.5, 0.0, 1, 1, 0, 1.0)
    top = common.Settings.from_env({"DOWNLOAD_RETRIES": "100", "DOWNLOAD_TIMEOUT": "86400",
                                    "DOWNLOAD_BACKOFF": "3600", "PGCONNECT_TIMEOUT": "86400",
                                    "EXPORT_COMPRESSION_LEVEL": "9"})
    assert (top.download_retries, top.download_timeout, top.download_backoff, top.pg_connect_timeout,
            top.export_compression_level) == (100, 86400.0, 3600.0, 86400, 9)
    defaults = common.Settings.from_env({name: "  " for name, _, _ in BAD_SETTINGS})
    assert (defaults.download_retries, defaults.download_timeout, defaults.download_backoff,
            defaults.pg_connect_timeout, defaults.export_batch_size, defaults.export_compression_level,
            defaults.max_reject_rate) == (4, 30.0, 1.0, 10, 50_000, 6, 0.10)


def test_config_pgconnect_timeout_reaches_psql_and_a_url_setting_wins():
    env = {"DATABASE_URL": "postgresql://etl@db.example.com/travel", "PGCONNECT_TIMEOUT": "7"}
    assert common.libpq_environment(env)["PGCONNECT_TIMEOUT"] == "7"
    assert common.libpq_environment({"DATABASE_URL": env["DATABASE_URL"]})["PGCONNECT_TIMEOUT"] == "10"
    in_url = {**env, "DATABASE_URL": env["DATABASE_URL"] + "?connect_timeout=3"}
    assert common.libpq_environment(in_url)["PGCONNECT_TIMEOUT"] == "3"


def test_config_travel_sh_stops_at_the_first_stage_with_its_exit_status(configured, monkeypatch, tmp_path):
    monkeypatch.setenv("DOWNLOAD_TIMEOUT", "0")

    result = subprocess.run([str(REPO / "travel.sh")], env={**os.environ, "PYTHON": sys.executable},
                            capture_output=True, text=True, timeout=120, check=False)

    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[-2] == (
        "download_dataset: error: DOWNLOAD_TIMEOUT must be a number of seconds above 0 and at most 86400, got '0'")
    assert lines[-1].startswith("travel.sh: error: stage download failed with exit status 2 after ")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full, a device whose every write fails with ENOSPC")
def test_config_full_disk_is_one_line_naming_tmpdir(monkeypatch, tmp_path, capsys):
    """A full disk (here /dev/full's real ENOSPC) ends any stage with one line that says what
    to do, not "unexpected OSError"."""
    import argparse
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def write_to_a_full_disk(settings):
        with open("/dev/full", "wb", buffering=0) as full:
            full.write(b"a row of rejects")

    assert common.run_stage("transform_load_csv_data", argparse.Namespace(), write_to_a_full_disk) == 1
    assert capsys.readouterr().err == (
        "transform_load_csv_data: error: no space left on the disk: free some, or set TMPDIR "
        f"(temporary files, now {tmp_path}) to a larger one\n"
    )
