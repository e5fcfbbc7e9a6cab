"""Fixtures of the Lambda's tests: moto's S3 server on 127.0.0.1 and the golden export.

Self-contained: it needs only pandas, boto3, moto[server,s3] and pytest (pyarrow when
present), never psycopg2, PostgreSQL or tests/conftest.py, so it runs in a venv that holds
what the AWS SDK for pandas layer ships:

    python -m pytest tests/lambda --confcutdir=tests/lambda -p no:cacheprovider

The default `python -m pytest` collects these tests too; the fixtures here then override
tests/conftest.py's of the same name, so both ways behave the same.
"""

from __future__ import annotations

import itertools
import logging
import os

import boto3
import pytest

from .support import PREFIX, load_lambda, upload_golden

# Variables the Lambda (and boto3) read: cleared for every test so the developer's shell or
# .env never leaks into a test.
VARIABLES = (
    "S3_BUCKET_NAME", "S3_PREFIX", "RESULTS_PREFIX", "LOG_LEVEL", "S3_SSE", "S3_KMS_KEY_ID",
    "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    """Each test runs in its own empty folder with none of the Lambda's variables set."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    # No ~/.aws of the developer's: boto3 must see only what the tests give it.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def moto_endpoint():
    """moto's S3 server in this process, over real HTTP on 127.0.0.1 (port chosen by the OS)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # its request log is not ours
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws(moto_endpoint, monkeypatch):
    """boto3's default chain pointed at moto's server (subprocesses inherit it)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-key-value")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return moto_endpoint


_bucket_numbers = itertools.count(1)


@pytest.fixture
def s3_bucket(aws, monkeypatch):
    """A new private bucket on the moto server; S3_BUCKET_NAME names it."""
    name = f"waddle-lambda-{os.getpid()}-{next(_bucket_numbers)}"
    boto3.client("s3").create_bucket(Bucket=name)
    monkeypatch.setenv("S3_BUCKET_NAME", name)
    return name


@pytest.fixture
def s3(s3_bucket):
    """A client of the moto server (the bucket exists)."""
    return boto3.client("s3")


@pytest.fixture
def lf(s3_bucket, monkeypatch):
    """The Lambda module, imported afresh (a cold start) once S3_BUCKET_NAME names the test's
    bucket and S3_PREFIX is the golden export's. A test that changes a setting imports it again
    with support.load_lambda()."""
    monkeypatch.setenv("S3_PREFIX", PREFIX)
    return load_lambda()


@pytest.fixture
def golden(s3_bucket):
    """The golden export of 2026-11-26 (zip) in the test's bucket; its manifest."""
    return upload_golden(s3_bucket)
