"""Stage 5's failures: each names what is wrong (the object's key, the manifest), and the
invocation fails (the handler raises) so the alarm fires. The golden export is altered in
the bucket; replace_object() fixes the manifest's size and hash so only the content is at fault."""

from __future__ import annotations

import io
import re
import zipfile

import boto3
import pytest

from .support import DAY, PREFIX, FakeContext, booking_keys, load_lambda, put_manifest, replace_object

BOOKING_HEADER = b"destination_id,number_of_passengers,total_booking_value\n"
FULL_HEADER = (b"booking_id,customer_id,destination_id,destination,country,booking_date,number_of_passengers,"
               b"cost_per_passenger,total_booking_value,passengers_imputed,cost_imputed\n")


def test_lambda_no_manifest_names_bucket_prefix_and_key(s3_bucket, monkeypatch):
    monkeypatch.setenv("S3_PREFIX", "exports")  # normalised to exports/
    lf = load_lambda()
    with pytest.raises(lf.ExportNotFound) as raised:
        lf.lambda_handler({"date": DAY}, FakeContext())
    message = str(raised.value)
    assert s3_bucket in message and "'exports/'" in message and f"exports/{DAY}/_manifest.json" in message


def test_lambda_missing_bucket_setting_is_reported(aws):
    lf = load_lambda()
    with pytest.raises(lf.MetricsError, match="S3_BUCKET_NAME is not set"):
        lf.lambda_handler({"date": DAY}, FakeContext())


def test_lambda_missing_bucket_is_reported(aws, monkeypatch):
    monkeypatch.setenv("S3_BUCKET_NAME", "waddle-no-such-bucket")
    lf = load_lambda()
    with pytest.raises(lf.MetricsError, match="waddle-no-such-bucket.*NoSuchBucket"):
        lf.lambda_handler({"date": DAY}, FakeContext())


@pytest.mark.parametrize("change", ["same_size", "appended", "truncated"])
def test_lambda_corrupted_object_names_its_key(lf, golden, s3_bucket, change):
    key = booking_keys(golden)[2]
    s3 = boto3.client("s3")
    body = bytearray(s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read())
    if change == "same_size":
        body[len(body) // 2] ^= 0xFF
    elif change == "appended":
        body += b"\n"
    else:
        del body[-10:]
    s3.put_object(Bucket=s3_bucket, Key=key, Body=bytes(body))
    with pytest.raises(lf.ExportCorrupt, match=re.escape(key)):
        lf.lambda_handler({"date": DAY}, FakeContext())


def test_lambda_listed_object_missing_names_its_key(lf, golden, s3_bucket):
    key = golden["objects"][-1]["key"]
    boto3.client("s3").delete_object(Bucket=s3_bucket, Key=key)
    with pytest.raises(lf.ExportCorrupt, match=re.escape(key) + ".*missing"):
        lf.lambda_handler({"date": DAY}, FakeContext())


@pytest.mark.parametrize(
    "data, problem",
    [
        (b"destination_id,number_of_passengers\n1,2\n", "lacks column.*total_booking_value"),
        (b"destination_id,number_of_passengers,total_booking_value,total_booking_value\n1,2,1.00,1.00\n",
         "repeats a column"),
        (BOOKING_HEADER + b"1,2,1.234\n", "data row 1: total_booking_value '1.234'"),
        (BOOKING_HEADER + b"1,,10.00\n", "cannot be read"),
        (BOOKING_HEADER + b"1,x,10.00\n", "cannot be read"),
        (BOOKING_HEADER + b"x,1,10.00\n", "cannot be read"),
        (BOOKING_HEADER + b"1,1,1.00\n1,1\n", "data row 2: total_booking_value ''"),  # pandas fills in ''
        (BOOKING_HEADER + b"1,1\n", "cannot be read"),  # pandas: too many columns specified
        (FULL_HEADER + "13,1,6,São Paulo, SP,Brasil,2026-11-13,2,0.05,0.10,f,f\n".encode(), "cannot be read"),
        (BOOKING_HEADER + b"1,0,10.00\n", "data row 1: number_of_passengers 0 is not a positive count"),
        (BOOKING_HEADER + b"1,1,1.00\n1,-3,1.00\n", "data row 2: number_of_passengers -3"),
        (BOOKING_HEADER + b"1,99999999999999999999,1.00\n", "cannot be read"),
        (BOOKING_HEADER + b"1,1,\xff\xfe\n", "cannot be read"),
        (b"", "lacks column"),
        (b"\xef\xbb\xbf" + BOOKING_HEADER + b"1,2,1.00\n", None),  # a BOM is fine
    ],
    ids=["missing-column", "repeated-column", "three-decimals", "empty-passengers", "text-passengers", "text-id",
         "short-row", "only-short-rows", "unquoted-comma-shifts-fields", "zero-passengers", "negative-passengers",
         "huge-passengers", "not-utf8",
         "empty-object", "bom"],
)
def test_lambda_bad_booking_content_names_the_object(lf, golden, s3_bucket, data, problem):
    key = booking_keys(golden)[1]
    replace_object(s3_bucket, golden, key, data)
    if problem is None:
        assert lf.lambda_handler({"date": DAY}, FakeContext())["rows_read"]["booking"] == golden["tables"]["booking"][
            "rows"]
        return
    with pytest.raises(lf.ExportCorrupt, match=re.escape(key) + ".*" + problem):
        lf.lambda_handler({"date": DAY}, FakeContext())


@pytest.mark.parametrize(
    "data, problem",
    [
        (b"destination_id,destination,country,popular_season\n1,Paris,France,Spring\n", "repeats destination_id 1"),
        (b"destination_id,destination\n5,Atlantis\n", "lacks column.*country"),
        (b"destination_id,destination,country,popular_season\n5,Atlantis,Nowhere,Summer\n6,Atlantis\n",
         "data row 2 lacks a name"),
        (b"destination_id,destination,country,popular_season\nfive,Atlantis,Nowhere,Summer\n", "cannot be read"),
    ],
    ids=["repeated-id", "missing-column", "short-row", "text-id"],
)
def test_lambda_bad_destination_content_names_the_object(lf, golden, s3_bucket, data, problem):
    key = [o["key"] for o in golden["objects"] if o["table"] == "destination"][1]
    replace_object(s3_bucket, golden, key, data)
    with pytest.raises(lf.ExportCorrupt, match=re.escape(key) + ".*" + problem):
        lf.lambda_handler({"date": DAY}, FakeContext())


def test_lambda_header_only_objects_are_an_empty_table(lf, golden, s3_bucket):
    # Stage 4 writes a header-only object for a table without rows: a day without bookings.
    for key in booking_keys(golden):
        replace_object(s3_bucket, golden, key, FULL_HEADER)
    result = lf.lambda_handler({"date": DAY}, FakeContext())
    assert result["totals"] == {"destinations": 9, "destinations_with_bookings": 0, "total_bookings": 0,
                                "total_booking_value": "0.00", "total_passengers_booked": 0}
    assert len(result["destinations_without_bookings"]) == 9


def test_lambda_booking_of_an_unknown_destination_fails_the_run(lf, golden, s3_bucket):
    replace_object(s3_bucket, golden, booking_keys(golden)[0], BOOKING_HEADER + b"999,2,10.00\n")
    with pytest.raises(lf.ExportCorrupt, match="destination_id.*999"):
        lf.lambda_handler({"date": DAY}, FakeContext())


def test_lambda_row_count_other_than_listed_is_reported(lf, golden, s3_bucket):
    key = booking_keys(golden)[0]
    replace_object(s3_bucket, golden, key, BOOKING_HEADER + b"1,2,10.00\n1,2,10.00\n", fix_rows=False)
    with pytest.raises(lf.ExportCorrupt, match=re.escape(key) + " has 2 rows, the manifest says 4"):
        lf.lambda_handler({"date": DAY}, FakeContext())


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda m: m.update(format_version=2), "format_version 2, not 1"),
        (lambda m: m.update(date="2026-11-25"), "is for date"),
        (lambda m: m.update(objects="none"), "objects list"),
        (lambda m: m.pop("objects"), "objects list"),
        (lambda m: m["objects"][0].update(key="elsewhere/x.csv.zip"), "outside exports/2026-11-26/"),
        (lambda m: m["objects"].append(dict(m["objects"][0])), "twice"),
        (lambda m: m["objects"][0].update(sha256="abc"), "no valid table, rows, bytes or sha256"),
        (lambda m: m["objects"][0].update(rows=-1), "no valid table, rows, bytes or sha256"),
        (lambda m: m["objects"][0].update(bytes=True), "no valid table, rows, bytes or sha256"),
        (lambda m: m["objects"][0].pop("table"), "no valid table, rows, bytes or sha256"),
        (lambda m: m["objects"].append("a key"), "lists 'a key'"),
        (lambda m: m["tables"]["booking"].update(rows=1), "manifest counts 1 booking rows, objects 13"),
        (lambda m: m["tables"]["booking"].pop("rows"), "manifest counts None booking rows, objects 13"),
        (lambda m: m.update(tables=["booking"]), "(and a tables object)"),
    ],
)
def test_lambda_invalid_manifest_is_reported(lf, golden, s3_bucket, edit, problem):
    edit(golden)
    put_manifest(s3_bucket, golden, day=DAY)
    with pytest.raises(lf.ExportCorrupt, match=re.escape(problem)):
        lf.lambda_handler({"date": DAY}, FakeContext())


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b"\xff\xfe", b""])
def test_lambda_manifest_that_is_not_a_json_object_is_reported(lf, s3_bucket, body):
    boto3.client("s3").put_object(Bucket=s3_bucket, Key=f"{PREFIX}{DAY}/_manifest.json", Body=body)
    with pytest.raises(lf.ExportCorrupt, match=f"manifest .*{PREFIX}{DAY}/_manifest.json"):
        lf.lambda_handler({"date": DAY}, FakeContext())


@pytest.mark.parametrize("members", [["a.csv", "b.csv"], []])
def test_lambda_zip_without_exactly_one_member_is_reported(lf, golden, s3_bucket, members):
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name in members:
            archive.writestr(name, BOOKING_HEADER)
    key = booking_keys(golden)[0]
    boto3.client("s3").put_object(Bucket=s3_bucket, Key=key, Body=out.getvalue())
    entry = next(o for o in golden["objects"] if o["key"] == key)
    import hashlib
    entry.update(bytes=len(out.getvalue()), sha256=hashlib.sha256(out.getvalue()).hexdigest())
    put_manifest(s3_bucket, golden)
    with pytest.raises(lf.ExportCorrupt, match=re.escape(key) + f".*holds {len(members)} files"):
        lf.lambda_handler({"date": DAY}, FakeContext())


@pytest.mark.parametrize("body", [b"PK\x03\x04 not really a zip", b"\x1f\x8b\x08 not really gzip"])
def test_lambda_object_that_does_not_inflate_is_reported(lf, golden, s3_bucket, body):
    import hashlib
    key = booking_keys(golden)[0]
    if body.startswith(b"\x1f"):
        golden["objects"][-1]["key"] = key = key.replace(".csv.zip", ".csv.gz")
        entry = golden["objects"][-1]
    else:
        entry = next(o for o in golden["objects"] if o["key"] == key)
    boto3.client("s3").put_object(Bucket=s3_bucket, Key=key, Body=body)
    entry.update(bytes=len(body), sha256=hashlib.sha256(body).hexdigest())
    put_manifest(s3_bucket, golden)
    with pytest.raises(lf.ExportCorrupt, match=re.escape(key) + ".*cannot be read"):
        lf.lambda_handler({"date": DAY}, FakeContext())


def test_lambda_object_of_unknown_kind_is_reported(lf, golden, s3_bucket):
    entry = golden["objects"][-1]
    entry["key"] = entry["key"].replace(".csv.zip", ".parquet")
    boto3.client("s3").put_object(Bucket=s3_bucket, Key=entry["key"], Body=b"PAR1")
    import hashlib
    entry.update(bytes=4, sha256=hashlib.sha256(b"PAR1").hexdigest())
    put_manifest(s3_bucket, golden)
    with pytest.raises(lf.ExportCorrupt, match=re.escape(entry["key"]) + " is neither"):
        lf.lambda_handler({"date": DAY}, FakeContext())


def test_lambda_first_bad_object_in_manifest_order_is_reported(lf, golden, s3_bucket, monkeypatch):
    # Four readers at once: whichever fails first in time, the report follows the manifest.
    keys = booking_keys(golden)
    for key in keys[1:]:
        replace_object(s3_bucket, golden, key, BOOKING_HEADER + b"1,1,1e5\n")
    with pytest.raises(lf.ExportCorrupt, match=re.escape(keys[1])):
        lf.lambda_handler({"date": DAY}, FakeContext())


def test_lambda_access_denied_says_which_permission(lf, s3_bucket, monkeypatch):
    # moto answers a bucket policy's explicit Deny with AccessDenied, as S3 does.
    import json
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Principal": "*", "Action": "s3:GetObject",
                                                       "Resource": f"arn:aws:s3:::{s3_bucket}/*"}]}
    boto3.client("s3").put_bucket_policy(Bucket=s3_bucket, Policy=json.dumps(policy))
    try:
        with pytest.raises(lf.MetricsError) as raised:
            lf.lambda_handler({"date": DAY}, FakeContext())
    finally:
        boto3.client("s3").delete_bucket_policy(Bucket=s3_bucket)
    if "access denied" not in str(raised.value):
        pytest.skip(f"this moto does not enforce bucket policies: {raised.value}")
    assert "s3:GetObject" in str(raised.value)
