"""Reading a day's export (stage 4) back from the bucket: keys, manifest, rows."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile

import boto3

# The exported columns of each table, in file order, read straight from the database: what
# an export must hold.
DB_QUERIES = {
    "customer": "SELECT customer_id, first_name, last_name, email, phone FROM customer ORDER BY 1",
    "destination": "SELECT destination_id, destination, country, popular_season FROM destination ORDER BY 1",
    "booking": """
        SELECT b.booking_id, b.customer_id, b.destination_id, d.destination, d.country, b.booking_date,
               b.number_of_passengers, b.cost_per_passenger, b.total_booking_value,
               b.passengers_imputed, b.cost_imputed
        FROM booking b JOIN destination d USING (destination_id) ORDER BY b.booking_id""",
}


def s3_keys(bucket: str) -> list[str]:
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def read_manifest(bucket: str, day: str, prefix: str = "") -> dict | None:
    key = f"{prefix}{day}/_manifest.json"
    if key not in s3_keys(bucket):
        return None
    return json.loads(boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read())


def export_csv_bytes(bucket: str, manifest: dict) -> dict[str, list[bytes]]:
    """table -> the CSV bytes of each listed object, after checking its size and SHA-256."""
    s3 = boto3.client("s3")
    out: dict[str, list[bytes]] = {}
    for entry in manifest["objects"]:
        body = s3.get_object(Bucket=bucket, Key=entry["key"])["Body"].read()
        assert (len(body), hashlib.sha256(body).hexdigest()) == (entry["bytes"], entry["sha256"]), entry["key"]
        with zipfile.ZipFile(io.BytesIO(body)) as archive:
            (member,) = archive.namelist()
            out.setdefault(entry["table"], []).append(archive.read(member))
    return out


def export_rows(bucket: str, manifest: dict) -> dict[str, list[dict[str, str]]]:
    """table -> every exported row as a dict; each object's row count checked against the manifest."""
    out: dict[str, list[dict[str, str]]] = {}
    objects = iter(manifest["objects"])
    for table, bodies in export_csv_bytes(bucket, manifest).items():
        rows = out.setdefault(table, [])
        for body in bodies:
            entry = next(objects)
            batch = list(csv.DictReader(io.StringIO(body.decode("utf-8"), newline="")))
            assert len(batch) == entry["rows"], entry["key"]
            rows.extend(batch)
    return out
