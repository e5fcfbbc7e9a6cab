"""The Lambda as a file that deploys alone and reads in one sitting, its local command line,
and its documentation (lambda/env.example, lambda/README.md, README.md's Stage 5)."""

from __future__ import annotations

import ast
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .support import DAY, EXPECTED, LAMBDA_DIR, LAMBDA_FILE, PREFIX, REPO, load_lambda, upload_golden

ALLOWED_IMPORTS = {"pandas", "numpy", "boto3", "botocore"}
OPTIONAL_IMPORTS = {"dotenv"}  # local runs only, inside `with suppress(ImportError)`
# Parquet exports only, inside `try: ... except ImportError:` that turns its absence into one error.
PARQUET_IMPORTS = {"pyarrow"}


def test_lambda_is_at_most_500_lines():
    assert len(LAMBDA_FILE.read_text(encoding="utf-8").splitlines()) <= 500


def test_lambda_imports_only_stdlib_pandas_and_boto3():
    tree = ast.parse(LAMBDA_FILE.read_text(encoding="utf-8"))
    guarded, caught = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.With) and "suppress(ImportError)" in ast.unparse(node.items[0]):
            guarded.update(id(n) for stmt in node.body for n in ast.walk(stmt))
        if isinstance(node, ast.Try) and any(ast.unparse(h.type) == "ImportError" for h in node.handlers):
            assert all(isinstance(h.body[0], ast.Raise) for h in node.handlers), "a missing pyarrow must fail clearly"
            caught.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import"
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top in OPTIONAL_IMPORTS:
                assert id(node) in guarded, f"{name} must be optional"
                continue
            if top in PARQUET_IMPORTS:
                assert id(node) in caught, f"{name} must be imported where its absence is one clear error"
                continue
            assert top in sys.stdlib_module_names or top in ALLOWED_IMPORTS, f"lambda_function imports {name}"


def test_lambda_has_one_reader_per_format_and_one_cents_conversion():
    source = LAMBDA_FILE.read_text(encoding="utf-8")
    assert source.count("pd.read_csv(") == 1 and source.count(".iter_batches(") == 1
    assert "pyarrow.csv" not in source and "read_parquet" not in source and "to_pandas" not in source
    for gone in ("decimal_cents", "arrow_cents", "fast_cents", "regex_cents", "parse_cents"):
        assert gone not in source
    assert re.findall(r"^def (\w*cents\w*)", source, re.MULTILINE) == ["to_cents", "format_cents"]


def test_lambda_module_has_the_handler_and_module_level_client_and_settings(aws):
    lf = load_lambda()
    assert callable(lf.lambda_handler)
    assert lf.lambda_handler.__code__.co_varnames[:2] == ("event", "context")
    assert isinstance(lf.SETTINGS, lf.Settings) and lf.S3.meta.service_model.service_name == "s3"


def test_lambda_logs_through_the_standard_logging_module(aws):
    # No handler of its own on Lambda: the runtime's (LoggingConfig LogFormat JSON) renders them.
    lf = load_lambda()
    assert lf.LOG.handlers == [] and lf.LOG.propagate
    assert not any(isinstance(h.formatter, lf.JsonLines) for h in logging.getLogger().handlers)


def test_lambda_settings_are_read_from_the_environment():
    lf = load_lambda()
    settings = lf.Settings.from_env({"S3_BUCKET_NAME": " b ", "S3_PREFIX": "/x", "RESULTS_PREFIX": "m",
                                     "LOG_LEVEL": "debug", "S3_SSE": "aws:kms", "S3_KMS_KEY_ID": "k"})
    assert settings == lf.Settings("b", "x/", "m/", "aws:kms", "k", "DEBUG")
    assert lf.Settings.from_env({}) == lf.Settings("", "", "", "AES256", "", "INFO")
    assert lf.Settings.from_env({"LOG_LEVEL": "chatty"}).log_level == "INFO"


def test_lambda_json_lines_formatter_of_the_cli():
    lf = load_lambda()
    record = logging.makeLogRecord({"msg": "object read", "levelname": "INFO", "key": "k", "rows": 3})
    assert {k: v for k, v in json.loads(lf.JsonLines().format(record)).items() if k != "timestamp"} == {
        "level": "INFO", "message": "object read", "key": "k", "rows": 3}


# ---------------------------------------------------------------------------------------
# The local command line (a subprocess: the file runs on its own, outside the repository's path)


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(LAMBDA_FILE), *args], capture_output=True, text=True, check=False,
                          cwd=cwd, timeout=120)


@pytest.fixture
def exported(s3_bucket, monkeypatch):
    monkeypatch.setenv("S3_PREFIX", PREFIX)
    return upload_golden(s3_bucket)


def test_lambda_cli_json(exported, tmp_path):
    done = run_cli("--date", DAY, "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    result = json.loads(done.stdout)
    assert (result["metrics"], result["totals"], result["date"]) == (EXPECTED["metrics"], EXPECTED["totals"], DAY)


def test_lambda_cli_table(exported, tmp_path):
    done = run_cli("--date", DAY, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"Destination metrics for {DAY} (s3://") and lines[0].endswith("7 objects, 13 bookings)")
    paris = next(line for line in lines if " Paris " in line).split()
    assert paris == ["1", "Paris", "France", "3", "2469.30", "4"]
    assert lines[-3].split() == ["total", "13", EXPECTED["totals"]["total_booking_value"], "2148483676"]
    assert lines[-1] == "Destinations without bookings: Atlantis"


def test_lambda_cli_verbose_logs_json_lines_on_stderr(exported, tmp_path):
    done = run_cli("--date", DAY, "--json", "--verbose", cwd=tmp_path)
    assert done.returncode == 0
    records = [json.loads(line) for line in done.stderr.splitlines()]
    assert [r["message"] for r in records][:2] == ["run started", "manifest read"]
    assert records[-1]["message"] == "run finished" and all(r["date"] == DAY for r in records)


def test_lambda_cli_reads_dotenv(s3_bucket, tmp_path, monkeypatch):
    pytest.importorskip("dotenv")
    monkeypatch.delenv("S3_PREFIX", raising=False)  # a real variable would win over .env
    upload_golden(s3_bucket, prefix="other/")
    (tmp_path / ".env").write_text("S3_PREFIX=other\n")
    done = run_cli("--date", DAY, "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["prefix"] == "other/"


def test_lambda_cli_env_file(s3_bucket, tmp_path, monkeypatch):
    pytest.importorskip("dotenv")
    monkeypatch.delenv("S3_PREFIX", raising=False)
    upload_golden(s3_bucket, prefix="elsewhere/")
    (tmp_path / "lambda.env").write_text("S3_PREFIX=elsewhere/\n")
    done = run_cli("--date", DAY, "--json", "--env-file", "lambda.env", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["prefix"] == "elsewhere/"
    missing = run_cli("--env-file", "nope.env", cwd=tmp_path)
    assert missing.returncode == 2 and "nope.env does not exist" in missing.stderr


def test_lambda_cli_failure_is_one_line(s3_bucket, tmp_path):
    done = run_cli("--date", DAY, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith(f"lambda_function: error: no export for {DAY}")
    assert s3_bucket in done.stderr


def test_lambda_cli_help_and_usage(tmp_path):
    done = run_cli("--help", cwd=tmp_path)
    assert done.returncode == 0
    for option in ("--date", "--json", "--env-file", "--verbose"):
        assert option in done.stdout
    bad = run_cli("--date", "26/11/2026", cwd=tmp_path)
    assert bad.returncode == 2 and "must be a date as YYYY-MM-DD, got '26/11/2026'" in bad.stderr
    assert run_cli("--no-such-option", cwd=tmp_path).returncode == 2


def test_lambda_main_in_process(exported, capsys):
    lf = load_lambda()
    assert lf.main(["--date", DAY, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["totals"] == EXPECTED["totals"]
    assert lf.LOG.level == logging.getLevelName(lf.SETTINGS.log_level)  # main() leaves logging as it found it


# ---------------------------------------------------------------------------------------
# Configuration and documentation agree


def env_example_variables() -> list[str]:
    text = (LAMBDA_DIR / "env.example").read_text(encoding="utf-8")
    return [line.split("=", 1)[0].strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_lambda_env_example_lists_the_settings_and_no_secret():
    names = env_example_variables()
    assert names == ["S3_BUCKET_NAME", "S3_PREFIX", "RESULTS_PREFIX", "S3_SSE", "S3_KMS_KEY_ID", "LOG_LEVEL"]
    source = LAMBDA_FILE.read_text(encoding="utf-8")
    for name in names:
        assert f'"{name}"' in source
    text = (LAMBDA_DIR / "env.example").read_text(encoding="utf-8")
    assert not re.search(r"(?i)(secret|access_key|password|token)\s*=", text)


def test_lambda_readmes_document_the_settings_options_and_money_grammar():
    readme = (LAMBDA_DIR / "README.md").read_text(encoding="utf-8")
    for name in env_example_variables():
        assert f"`{name}`" in readme, f"lambda/README.md does not document {name}"
    for option in ("--date", "--json", "--env-file", "--verbose"):
        assert option in readme
    assert "lambda_function.lambda_handler" in readme and "python3.12" in readme
    stage5 = (REPO / "README.md").read_text(encoding="utf-8").split("## Stage 5", 1)[1].split("\n## ", 1)[0]
    for text in (readme, stage5):
        assert "[0-9]{1,16}\\.[0-9]{2}" in text, "the export's money grammar"
    row = next(line for line in (REPO / "README.md").read_text(encoding="utf-8").splitlines()
               if line.startswith("| `S3_PREFIX`"))
    assert "add a missing trailing" in row  # by both stages
