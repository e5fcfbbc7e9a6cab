"""Stage 5 on the golden export (tests/lambda/golden_export, written by stage 4 and pinned by
tests/test_contract.py), through the handler, against moto's S3 server over HTTP.

The expected metrics (golden_export/expected_metrics.json) were computed from the dataset
with Decimal; support.independent_metrics() computes them again from the golden CSVs.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from datetime import UTC, datetime, timedelta

import boto3
import pytest

from .support import (
    DAY,
    EVENTS,
    EXPECTED,
    GZIP_DAY,
    PREFIX,
    FakeContext,
    event,
    golden_files,
    independent_metrics,
    load_lambda,
    put_manifest,
    unpack,
    upload_golden,
)


def assert_golden_metrics(result: dict, day: str = DAY) -> None:
    for name in ("metrics", "totals", "destinations_without_bookings", "destination_ids_without_bookings",
                 "rows_read"):
        assert result[name] == EXPECTED[name], name
    assert result["date"] == day


def test_lambda_golden_expected_metrics_agree_with_an_independent_computation():
    for day in (DAY, GZIP_DAY):
        independent = independent_metrics(day)
        assert {m["destination_id"]: tuple(m[c] for c in list(m)[1:]) for m in EXPECTED["metrics"]} == independent


@pytest.mark.parametrize("day", [DAY, GZIP_DAY], ids=["zip", "gzip"])
def test_lambda_metrics_of_the_golden_export_are_exact(lf, s3_bucket, day):
    manifest = upload_golden(s3_bucket, day)

    result = lf.lambda_handler({"date": day}, FakeContext())

    assert_golden_metrics(result, day)
    assert (result["bucket"], result["prefix"]) == (s3_bucket, PREFIX)
    assert result["manifest"] == f"{PREFIX}{day}/_manifest.json"
    assert result["objects_read"] == 3 + 4  # destination and booking batches; customers are never read
    assert result["exported_at"] == manifest["exported_at"]
    assert result["results"] is None
    assert json.loads(json.dumps(result)) == result


def test_lambda_golden_edge_cases_survive(lf, golden):
    by_id = {m["destination_id"]: m for m in lf.lambda_handler({"date": DAY}, FakeContext())["metrics"]}
    assert by_id[5]["total_bookings_per_destination"] == 0 and by_id[5]["total_booking_value_per_destination"] == "0.00"
    assert (by_id[4]["destination"], by_id[10]["destination"], by_id[10]["country"]) == ("Nan", "NA", "NA")
    assert by_id[6]["destination"] == "São Paulo, SP" and by_id[7]["destination"] == 'Zürich "Altstadt"'
    assert by_id[9000000000000000001]["destination"] == "京都"  # BIGINT ids survive exactly
    assert by_id[9000000000000000001]["total_booking_value_per_destination"] == "10000009999979999.98"
    assert by_id[6]["total_passengers_booked_per_destination"] == 2147483651  # beyond INTEGER, summed exactly


def test_lambda_same_name_destinations_stay_apart_and_sort_by_country(lf, golden):
    result = lf.lambda_handler({"date": DAY}, FakeContext())
    springfields = [m for m in result["metrics"] if m["destination"] == "Springfield"]
    assert [(m["destination_id"], m["country"]) for m in springfields] == [(3, "Australia"), (2, "United States")]
    order = [(m["destination"], m["country"], m["destination_id"]) for m in result["metrics"]]
    assert order == sorted(order)


@pytest.mark.parametrize("prefix", ["", "other/deeper/"])
def test_lambda_reads_any_prefix(s3_bucket, monkeypatch, prefix):
    upload_golden(s3_bucket, prefix=prefix)
    monkeypatch.setenv("S3_PREFIX", prefix)
    assert_golden_metrics(load_lambda().lambda_handler({"date": DAY}, FakeContext()))


@pytest.mark.parametrize("written, folder",
                         [("exports", "exports/"), ("/exports", "exports/"), (" exports/ ", "exports/"), ("/", "")])
def test_lambda_s3_prefix_is_normalised_like_stage_4(s3_bucket, monkeypatch, written, folder):
    upload_golden(s3_bucket, prefix=folder)
    monkeypatch.setenv("S3_PREFIX", written)
    result = load_lambda().lambda_handler({"date": DAY}, FakeContext())
    assert result["prefix"] == folder
    assert_golden_metrics(result)


@pytest.mark.parametrize("chunk_rows", [1, 2, 3, 100_000])
def test_lambda_chunk_size_does_not_change_results(lf, golden, s3_bucket, chunk_rows):
    result = lf.compute_metrics(boto3.client("s3"), s3_bucket, PREFIX, DAY, chunk_rows=chunk_rows)
    assert_golden_metrics(result)


@pytest.mark.parametrize("workers", [1, 2, 8])
def test_lambda_number_of_readers_does_not_change_results(lf, golden, monkeypatch, workers):
    monkeypatch.setattr(lf, "READ_WORKERS", workers)
    assert_golden_metrics(lf.lambda_handler({"date": DAY}, FakeContext()))


def test_lambda_objects_outside_the_manifest_are_not_read(lf, golden, s3_bucket):
    s3 = boto3.client("s3")
    run = golden["run_id"]
    s3.put_object(Bucket=s3_bucket, Key=f"{PREFIX}{DAY}/{run}/booking/booking_{DAY}_batch_0099.csv", Body=b"x\n1\n")
    s3.put_object(Bucket=s3_bucket, Key=f"{PREFIX}{DAY}/older-run/booking/booking_{DAY}_batch_0001.csv", Body=b"y")
    assert_golden_metrics(lf.lambda_handler({"date": DAY}, FakeContext()))


def test_lambda_never_reads_customer_objects(lf, golden, s3_bucket):
    # The role may not read them (tests/test_lambda_template.py); deleting them shows it does not try.
    s3 = boto3.client("s3")
    for entry in golden["objects"]:
        if entry["table"] == "customer":
            s3.delete_object(Bucket=s3_bucket, Key=entry["key"])
    assert_golden_metrics(lf.lambda_handler({"date": DAY}, FakeContext()))


def test_lambda_reads_a_plain_csv_object(lf, golden, s3_bucket):
    # Stage 4 compresses; an uncompressed .csv listed in a manifest is read the same way.
    entry = golden["objects"][-1]
    plain = unpack(entry["key"], golden_files()[entry["key"]])
    entry["key"] = entry["key"].removesuffix(".zip")
    boto3.client("s3").put_object(Bucket=s3_bucket, Key=entry["key"], Body=plain)
    entry.update(bytes=len(plain), sha256=hashlib.sha256(plain).hexdigest())
    put_manifest(s3_bucket, golden)
    assert_golden_metrics(lf.lambda_handler({"date": DAY}, FakeContext()))


# ---------------------------------------------------------------------------------------
# The day


def test_lambda_date_from_a_test_event_file(s3_bucket, monkeypatch):
    upload_golden(s3_bucket, GZIP_DAY)
    monkeypatch.setenv("S3_PREFIX", PREFIX)
    assert_golden_metrics(load_lambda().lambda_handler(event("manual-date.json"), FakeContext()), GZIP_DAY)


def test_lambda_date_from_the_eventbridge_schedule(lf, golden):
    result = lf.lambda_handler(event("eventbridge-scheduled.json"), FakeContext())
    assert_golden_metrics(result, DAY)


def test_lambda_date_defaults_to_today_utc(lf, s3_bucket):
    before = datetime.now(UTC).date()
    manifests = {}
    for day in {before, before + timedelta(days=1)}:  # the run may straddle midnight UTC
        manifests[day] = golden_manifest_for(s3_bucket, day.isoformat())
    result = lf.lambda_handler({}, FakeContext())
    assert result["date"] in {before.isoformat(), (datetime.now(UTC).date()).isoformat()}
    assert result["totals"] == EXPECTED["totals"]


def golden_manifest_for(bucket: str, day: str) -> dict:
    """The golden export's objects listed under another day's folder (same bytes, new keys)."""
    s3 = boto3.client("s3")
    files = golden_files(DAY)
    manifest = json.loads(files.pop(f"{PREFIX}{DAY}/_manifest.json"))
    for entry in manifest["objects"]:
        body = files[entry["key"]]
        entry["key"] = entry["key"].replace(f"{PREFIX}{DAY}/", f"{PREFIX}{day}/")
        s3.put_object(Bucket=bucket, Key=entry["key"], Body=body)
    manifest["date"] = day
    s3.put_object(Bucket=bucket, Key=f"{PREFIX}{day}/_manifest.json", Body=json.dumps(manifest).encode())
    return manifest


@pytest.mark.parametrize(
    "given, now, day",
    [
        ({"date": "2026-02-28", "time": "2026-03-01T06:00:00Z"}, None, "2026-02-28"),
        ({"time": "2026-11-26T06:00:00Z"}, None, "2026-11-26"),
        ({"time": "2026-11-26T23:30:00-02:00"}, None, "2026-11-27"),  # the UTC date
        ({"time": "2026-11-26T06:00:00"}, None, "2026-11-26"),  # no zone: taken as UTC
        ({}, datetime(2026, 11, 26, 23, 59, tzinfo=UTC) + timedelta(hours=5), "2026-11-27"),
        (None, datetime(2026, 11, 26, 0, 1, tzinfo=UTC), "2026-11-26"),
        ("not a mapping", datetime(2026, 11, 26, 0, 1, tzinfo=UTC), "2026-11-26"),
    ],
)
def test_lambda_resolve_date(given, now, day):
    assert load_lambda().resolve_date(given, now=now) == day


@pytest.mark.parametrize("bad", [{"date": "2026-13-01"}, {"date": "26-11-2026"}, {"date": "2026-02-30"},
                                 {"date": 20261126}, {"date": "２０２６-11-26"}, {"time": "yesterday"}])
def test_lambda_rejects_bad_dates(lf, bad):
    with pytest.raises(lf.MetricsError, match="YYYY-MM-DD|ISO 8601"):
        lf.lambda_handler(bad, FakeContext())


def test_lambda_rejects_the_bad_date_event_file(lf):
    with pytest.raises(lf.MetricsError, match="YYYY-MM-DD"):
        lf.lambda_handler(event("bad-date.json"), FakeContext())


def test_lambda_every_event_file_is_an_object_the_handler_reads():
    """lambda/events/ holds what lambda/README.md shows for the console's test events."""
    names = sorted(path.name for path in EVENTS.glob("*.json"))
    assert names == ["bad-date.json", "eventbridge-scheduled.json", "manual-date.json"]
    for name in names:
        assert isinstance(event(name), dict), name


# ---------------------------------------------------------------------------------------
# Results in the bucket


def test_lambda_writes_encrypted_results_when_results_prefix_is_set(s3_bucket, monkeypatch):
    upload_golden(s3_bucket)
    monkeypatch.setenv("S3_PREFIX", PREFIX)
    monkeypatch.setenv("RESULTS_PREFIX", "metrics")  # normalised to metrics/ too
    result = load_lambda().lambda_handler({"date": DAY}, FakeContext())

    s3 = boto3.client("s3")
    json_key, csv_key = f"metrics/{DAY}/destination_metrics.json", f"metrics/{DAY}/destination_metrics.csv"
    assert result["results"] == {"json": f"s3://{s3_bucket}/{json_key}", "csv": f"s3://{s3_bucket}/{csv_key}"}
    assert json.loads(s3.get_object(Bucket=s3_bucket, Key=json_key)["Body"].read()) == result
    stored = s3.get_object(Bucket=s3_bucket, Key=csv_key)
    rows = list(csv.DictReader(io.StringIO(stored["Body"].read().decode("utf-8"))))
    assert rows == [{k: str(v) for k, v in m.items()} for m in EXPECTED["metrics"]]
    assert stored["ContentType"] == "text/csv; charset=utf-8"
    for key in (json_key, csv_key):
        assert s3.head_object(Bucket=s3_bucket, Key=key)["ServerSideEncryption"] == "AES256"


def test_lambda_writes_results_with_the_kms_key_of_s3_sse(s3_bucket, monkeypatch):
    upload_golden(s3_bucket)
    key_arn = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    for name, value in {"S3_PREFIX": PREFIX, "RESULTS_PREFIX": "metrics/", "S3_SSE": "aws:kms",
                        "S3_KMS_KEY_ID": key_arn}.items():
        monkeypatch.setenv(name, value)
    load_lambda().lambda_handler({"date": DAY}, FakeContext())
    s3 = boto3.client("s3")
    for name in ("json", "csv"):
        head = s3.head_object(Bucket=s3_bucket, Key=f"metrics/{DAY}/destination_metrics.{name}")
        assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", key_arn)


@pytest.mark.parametrize("sse, key, problem", [("none", "", "S3_SSE must be AES256 or aws:kms"),
                                               ("AES256", "alias/x", "aws:kms to use S3_KMS_KEY_ID")])
def test_lambda_bad_encryption_setting_is_refused_before_reading(s3_bucket, monkeypatch, sse, key, problem):
    monkeypatch.setenv("S3_SSE", sse)
    monkeypatch.setenv("S3_KMS_KEY_ID", key)
    lf = load_lambda()
    with pytest.raises(lf.MetricsError, match=problem):
        lf.lambda_handler({"date": DAY}, FakeContext())


def test_lambda_writes_nothing_without_results_prefix(lf, golden, s3_bucket):
    before = {o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=s3_bucket)["Contents"]}
    lf.lambda_handler({"date": DAY}, FakeContext())
    assert {o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=s3_bucket)["Contents"]} == before


# ---------------------------------------------------------------------------------------
# Logs: standard logging records with their fields (the runtime renders them as JSON)


def test_lambda_logs_each_step_with_its_fields(lf, golden, caplog):
    caplog.set_level("INFO", logger="data_waddle.lambda")
    lf.lambda_handler({"date": DAY}, FakeContext())
    records = [r for r in caplog.records if r.name == "data_waddle.lambda"]
    messages = [r.getMessage() for r in records]
    assert messages[0] == "run started" and messages[1] == "manifest read" and messages[-1] == "run finished"
    assert messages.count("object read") == 7
    assert all(r.date == DAY for r in records)
    read = [r for r in records if r.getMessage() == "object read"]
    assert {r.key for r in read} == {o["key"] for o in golden["objects"] if o["table"] != "customer"}
    assert records[-1].total_booking_value == EXPECTED["totals"]["total_booking_value"]
    assert records[-1].total_bookings == EXPECTED["totals"]["total_bookings"]


def test_lambda_failure_is_logged_with_context_then_raised(lf, s3_bucket, caplog):
    with pytest.raises(lf.ExportNotFound):
        lf.lambda_handler({"date": DAY}, FakeContext())
    failed = [r for r in caplog.records if r.getMessage() == "run failed"]
    assert len(failed) == 1 and failed[0].levelname == "ERROR" and not failed[0].exc_info
    assert (failed[0].error_type, failed[0].date, failed[0].bucket) == ("ExportNotFound", DAY, s3_bucket)
