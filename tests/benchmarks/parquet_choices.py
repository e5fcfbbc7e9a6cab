"""The measurements behind the Parquet export's codec and row-group size (docs/performance-export.md).

    python tests/benchmarks/parquet_choices.py --bookings 1000000 [--batch-size 50000] [--json FILE]

Builds the booking export of the seeded dataset (clean_data.py: the rows stage 3 would load,
joined with the destinations' names as stage 4 exports them), cuts it into batches of
--batch-size rows as COPY's CSV, and turns each batch into Parquet with stage 4's own
parquet_batch() conversion. Then, for each codec (snappy, zstd, gzip, none) and row-group
size, writes every batch again and reports: bytes stored, write seconds (CPU of this process:
the export's cost per batch), and the seconds to read back the three columns the metrics read
(what the Lambda and an Athena scan of them pay). No PostgreSQL or S3: only the conversion
and the files are measured. Prints a table; --json writes the figures.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import clean_data  # noqa: E402

import batch_transfer_data_to_cloud_storage as stage  # noqa: E402

CODECS = ("snappy", "zstd", "gzip", "none")
METRIC_COLUMNS = ["destination_id", "number_of_passengers", "total_booking_value"]


def export_batches(bookings: int, batch_size: int) -> list[bytes]:
    """The booking export as COPY would send it (CSV without header), cut into batches."""
    frames = clean_data.clean_frames(bookings, bookings)
    places = frames["destination"].set_index("destination_id")[["destination", "country"]]
    booking = frames["booking"].join(places, on="destination_id")[list(stage.EXPORT_COLUMNS["booking"])]
    return [booking.iloc[start:start + batch_size].to_csv(index=False, header=False, lineterminator="\n").encode()
            for start in range(0, len(booking), batch_size)]


def measure(tables, codec: str, row_group: int) -> dict:
    import pyarrow.parquet as pq

    started, stored, bodies = time.process_time(), 0, []
    for table in tables:
        out = io.BytesIO()
        pq.write_table(table, out, compression=codec, row_group_size=row_group)
        bodies.append(out.getvalue())
        stored += len(bodies[-1])
    write = time.process_time() - started
    started = time.process_time()
    for body in bodies:
        pq.ParquetFile(io.BytesIO(body)).read(columns=METRIC_COLUMNS)
    read = time.process_time() - started
    started = time.process_time()
    for body in bodies:
        pq.ParquetFile(io.BytesIO(body)).read()
    return {"codec": codec, "row_group_rows": row_group, "bytes": stored, "write_cpu_s": round(write, 3),
            "read_metric_columns_cpu_s": round(read, 3), "read_all_cpu_s": round(time.process_time() - started, 3)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bookings", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=50_000, help="rows per object, as EXPORT_BATCH_SIZE")
    parser.add_argument("--json", type=Path, metavar="FILE")
    args = parser.parse_args(argv)
    import pyarrow.parquet as pq

    batches = export_batches(args.bookings, args.batch_size)
    started = time.process_time()
    tables = [pq.read_table(io.BytesIO(stage.parquet_batch(data, "booking"))) for data in batches]
    conversion = time.process_time() - started
    csv_bytes = sum(map(len, batches))
    rows = []
    for codec in CODECS:
        rows.append(measure(tables, codec, args.batch_size))
    for row_group in (10_000, 25_000):
        if row_group < args.batch_size:
            rows.append(measure(tables, "snappy", row_group))
    print(f"{args.bookings:,} bookings in {len(batches)} batches of {args.batch_size:,} rows; CSV as COPY sends it: "
          f"{csv_bytes / 1e6:.1f} MB; CSV -> typed Arrow (stage 4's parquet_batch, then read back): "
          f"{conversion:.2f} s CPU")
    print(f"{'codec':<8}{'row group':>10}{'MB':>9}{'write s':>9}{'read 3 cols s':>15}{'read all s':>12}")
    for r in rows:
        print(f"{r['codec']:<8}{r['row_group_rows']:>10,}{r['bytes'] / 1e6:>9.1f}{r['write_cpu_s']:>9.2f}"
              f"{r['read_metric_columns_cpu_s']:>15.2f}{r['read_all_cpu_s']:>12.2f}")
    if args.json:
        args.json.write_text(json.dumps({"bookings": args.bookings, "batch_size": args.batch_size,
                                         "csv_bytes": csv_bytes, "conversion_cpu_s": round(conversion, 3),
                                         "results": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
