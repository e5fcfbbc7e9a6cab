"""The generator's dataset as clean rows, ready for psql \\copy into travel.sql's tables.

Used by the benchmark's direct path (--stages without load): at 10M bookings, filling the
database with \\copy of clean rows measures export and Lambda without waiting for stage 3.
The rows are what stage 3 would load from the same files (ISO dates, destination ids,
totals in exact cents, no imputation needed since the generated data has no gaps).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "sample_data"))

import generate  # noqa: E402  sample_data/generate.py, the seeded generator

from floors import TABLE_COLUMNS  # noqa: E402


def iso_dates(text: pd.Series) -> pd.Series:
    """The generator's four date styles as YYYY-MM-DD."""
    text = text.astype(str)
    numeric = text.str[:1].str.isdigit()
    out = text.str[:10].str.replace("/", "-", regex=False)
    spelled = pd.to_datetime(text[~numeric], format="%B %d, %Y").dt.strftime("%Y-%m-%d")
    out[~numeric] = spelled
    return out


def clean_frames(customers: int, bookings: int) -> dict[str, pd.DataFrame]:
    frames = generate.generate(customers, bookings)
    dest = frames["destination"]
    book = frames["booking"]
    ids = dict(zip(dest["destination"], dest["destination_id"], strict=True))
    cents = (book["cost_per_passenger"].astype(float) * 100).round().astype(np.int64)
    total = cents * book["number_of_passengers"].astype(np.int64)
    clean_booking = pd.DataFrame({
        "booking_id": book["booking_id"],
        "customer_id": book["customer_id"],
        "destination_id": book["destination"].map(ids),
        "booking_date": iso_dates(book["booking_date"]),
        "number_of_passengers": book["number_of_passengers"],
        "cost_per_passenger": book["cost_per_passenger"],
        "total_booking_value": (total // 100).astype(str) + "." + (total % 100).astype(str).str.zfill(2),
        "passengers_imputed": "f",
        "cost_imputed": "f",
    })
    return {
        "destination": dest[list(TABLE_COLUMNS["destination"])],
        "customer": frames["customer"][list(TABLE_COLUMNS["customer"])],
        "booking": clean_booking,
    }


def write_clean(customers: int, bookings: int, out: Path) -> dict[str, int]:
    """Write destination.csv, customer.csv, booking.csv (no header) to `out`; their row counts."""
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for table, frame in clean_frames(customers, bookings).items():
        frame.to_csv(out / f"{table}.csv", index=False, header=False, lineterminator="\n")
        counts[table] = len(frame)
    return counts


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bookings", type=int, required=True, help="bookings (= customers)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    print(write_clean(args.bookings, args.bookings, args.out))
