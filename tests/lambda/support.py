"""Helpers of the Lambda's tests: the module loaded by path, the golden export in a bucket."""

from __future__ import annotations

import csv
import gzip
import hashlib
import importlib.util
import io
import json
import subprocess
import sys
import zipfile
from decimal import Decimal
from pathlib import Path

import boto3

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
LAMBDA_DIR = REPO / "lambda"
LAMBDA_FILE = LAMBDA_DIR / "lambda_function.py"
GOLDEN = HERE / "golden_export"
PREFIX = "exports/"  # the golden export's S3_PREFIX
DAY, GZIP_DAY, PARQUET_DAY = "2026-11-26", "2026-11-27", "2026-11-28"  # zip, gzip, Parquet (same data)
EXPECTED = json.loads((GOLDEN / "expected_metrics.json").read_text(encoding="utf-8"))
EVENTS = LAMBDA_DIR / "events"  # test events as in the console: scheduled, manual, bad date


def load_lambda():
    """lambda/lambda_function.py imported afresh, as a new container would (`lambda` is a
    keyword, not a package): its settings and client come from the current environment."""
    name = "waddle_lambda_function"
    spec = importlib.util.spec_from_file_location(name, LAMBDA_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


class FakeContext:
    """The attributes of a Lambda context the handler may use."""

    aws_request_id = "11111111-2222-3333-4444-555555555555"
    function_name = "waddle-destination-metrics"

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 300_000


def event(name: str) -> dict:
    return json.loads((EVENTS / name).read_text(encoding="utf-8"))


def golden_files(day: str = DAY) -> dict[str, bytes]:
    """Key (relative to the bucket, prefix `exports/`) -> bytes of the day's golden export."""
    folder = GOLDEN / PREFIX / day
    return {f"{PREFIX}{day}/{p.relative_to(folder).as_posix()}": p.read_bytes()
            for p in folder.rglob("*") if p.is_file()}


def upload_golden(bucket: str, day: str = DAY, prefix: str = PREFIX) -> dict:
    """Put the day's golden export under `prefix` (the manifest's keys moved with it); returns
    its manifest."""
    s3 = boto3.client("s3")
    manifest = None
    for key, body in golden_files(day).items():
        key = prefix + key.removeprefix(PREFIX)
        if key.endswith("/_manifest.json"):
            manifest = json.loads(body.decode("utf-8").replace(f'"{PREFIX}{day}/', f'"{prefix}{day}/'))
        else:
            s3.put_object(Bucket=bucket, Key=key, Body=body)
    put_manifest(bucket, manifest, prefix)
    return manifest


def put_manifest(bucket: str, manifest: dict, prefix: str = PREFIX, day: str | None = None) -> None:
    """Store `manifest` as the day's (its own date unless `day` says otherwise)."""
    boto3.client("s3").put_object(Bucket=bucket, Key=f"{prefix}{day or manifest['date']}/_manifest.json",
                                  Body=json.dumps(manifest).encode())


def pack(member: str, data: bytes, compression: str) -> bytes:
    if compression == "zip":
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(member, data)
        return out.getvalue()
    return gzip.compress(data, mtime=0) if compression == "gzip" else data


def unpack(key: str, body: bytes) -> bytes:
    if key.endswith(".zip"):
        with zipfile.ZipFile(io.BytesIO(body)) as archive:
            return archive.read(archive.namelist()[0])
    return gzip.decompress(body) if key.endswith(".gz") else body


def replace_object(bucket: str, manifest: dict, key: str, data: bytes, *, fix_rows: bool = True,
                   prefix: str = PREFIX) -> None:
    """Store `data` (CSV text, packed by the key's extension) as the listed object `key` and
    make the manifest agree with its size, hash (and row count), so only the content is at fault."""
    compression = "zip" if key.endswith(".zip") else "gzip" if key.endswith(".gz") else "none"
    body = pack("x.csv", data, compression)
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=body)
    entry = next(o for o in manifest["objects"] if o["key"] == key)
    rows = max(0, len(list(csv.reader(io.StringIO(data.decode("utf-8", "replace"))))) - 1)
    if fix_rows:
        manifest["tables"][entry["table"]]["rows"] += rows - entry["rows"]
        entry["rows"] = rows
    entry.update(bytes=len(body), sha256=hashlib.sha256(body).hexdigest())
    put_manifest(bucket, manifest, prefix)


def booking_keys(manifest: dict) -> list[str]:
    return [o["key"] for o in manifest["objects"] if o["table"] == "booking"]


def independent_metrics(day: str = DAY) -> dict:
    """The golden export's metrics computed without the Lambda: csv module, Decimal, loops."""
    files = golden_files(day)
    manifest = json.loads(files[f"{PREFIX}{day}/_manifest.json"])
    tables: dict[str, list[dict]] = {"destination": [], "booking": []}
    for entry in manifest["objects"]:
        if entry["table"] in tables:
            text = unpack(entry["key"], files[entry["key"]]).decode("utf-8")
            tables[entry["table"]].extend(csv.DictReader(io.StringIO(text, newline="")))
    sums = {int(d["destination_id"]): [d["destination"], d["country"], 0, Decimal("0.00"), 0]
            for d in tables["destination"]}
    for b in tables["booking"]:
        row = sums[int(b["destination_id"])]
        row[2] += 1
        row[3] += Decimal(b["total_booking_value"])
        row[4] += int(b["number_of_passengers"])
    return {i: (name, country, n, f"{value:.2f}", p) for i, (name, country, n, value, p) in sums.items()}


def put_case(bucket: str, day: str, data_rows: tuple[bytes, int]) -> str:
    """A day's export: the golden destinations and one booking object holding `data`; its key."""
    s3 = boto3.client("s3")
    files = golden_files(DAY)
    destinations = json.loads(files[f"{PREFIX}{DAY}/_manifest.json"])["objects"]
    manifest = {"format_version": 1, "date": day, "prefix": f"{PREFIX}{day}/", "run_id": "r",
                "tables": {"destination": {"rows": 9}}, "objects": []}
    for entry in [e for e in destinations if e["table"] == "destination"]:
        key = entry["key"].replace(DAY, day)
        s3.put_object(Bucket=bucket, Key=key, Body=files[entry["key"]])
        manifest["objects"].append({**entry, "key": key})
    key = f"{PREFIX}{day}/r/booking/booking_{day}_batch_0001.csv.zip"
    data, rows = data_rows
    body = pack("booking.csv", data, "zip")
    s3.put_object(Bucket=bucket, Key=key, Body=body)
    manifest["objects"].append({"key": key, "table": "booking", "rows": rows, "bytes": len(body),
                                "sha256": hashlib.sha256(body).hexdigest()})
    s3.put_object(Bucket=bucket, Key=f"{PREFIX}{day}/_manifest.json", Body=json.dumps(manifest).encode())
    return key


CHILD = r"""
import importlib.util, json, logging, sys
class NoPyarrow:  # every import of pyarrow fails, as in a layer without it
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "pyarrow":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
if sys.argv[1] == "without":
    sys.meta_path.insert(0, NoPyarrow())
else:
    import pyarrow
spec = importlib.util.spec_from_file_location("lambda_function", sys.argv[2])
lf = importlib.util.module_from_spec(spec)
sys.modules["lambda_function"] = lf
spec.loader.exec_module(lf)
handler = logging.StreamHandler(sys.stderr)  # as the Lambda runtime's JSON log format does
handler.setFormatter(lf.JsonLines())
logging.getLogger().addHandler(handler)
for day in sys.argv[3:]:
    try:
        result = lf.lambda_handler({"date": day}, None)
        print(json.dumps({"day": day, "totals": result["totals"]}))
    except lf.MetricsError as exc:
        print(json.dumps({"day": day, "error": type(exc).__name__, "message": str(exc)}))
import pandas
print(json.dumps({"pyarrow": sys.modules.get("pyarrow") is not None, "pandas": pandas.__version__}))
"""


def run_child(mode: str, days: list[str]) -> tuple[list[dict], str]:
    done = subprocess.run([sys.executable, "-c", CHILD, mode, str(LAMBDA_FILE), *days], capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines()], done.stderr
