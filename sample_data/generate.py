"""Seeded generator of travel-booking CSVs in the source format (for demos, tests, benchmarks).

Writes customer.csv, destination.csv and booking.csv to --out: 50 destinations, and as
many customers and bookings as asked, with the same columns as the public dataset
(booking.csv starts with an unnamed pandas index column and mixes date formats). With
--dirty, a fixed handful of rows break the cleansing rules on purpose (see DIRTY_ROWS);
the shipped sample in this folder was made with:

    python sample_data/generate.py --customers 200 --bookings 200 --dirty --out sample_data

`--rows N` is short for `--customers N --bookings N` (what the benchmarks use):

    python sample_data/generate.py --rows 1000000 --out /tmp/travel-1m

The same seed and sizes always give the same bytes.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

DESTINATIONS = [
    ("Paris", "France", "Spring"), ("London", "United Kingdom", "Summer"), ("Rome", "Italy", "Autumn"),
    ("Barcelona", "Spain", "Summer"), ("Amsterdam", "Netherlands", "Spring"), ("Berlin", "Germany", "Summer"),
    ("Prague", "Czech Republic", "Winter"), ("Vienna", "Austria", "Winter"), ("Lisbon", "Portugal", "Autumn"),
    ("Athens", "Greece", "Summer"), ("Dubrovnik", "Croatia", "Summer"), ("Reykjavik", "Iceland", "Winter"),
    ("Oslo", "Norway", "Summer"), ("Stockholm", "Sweden", "Summer"), ("Copenhagen", "Denmark", "Spring"),
    ("Dublin", "Ireland", "Summer"), ("Edinburgh", "United Kingdom", "Autumn"), ("Istanbul", "Turkey", "Spring"),
    ("Cairo", "Egypt", "Winter"), ("Marrakech", "Morocco", "Spring"), ("Cape Town", "South Africa", "Summer"),
    ("Nairobi", "Kenya", "Winter"), ("Dubai", "United Arab Emirates", "Winter"), ("Mumbai", "India", "Winter"),
    ("Goa", "India", "Winter"), ("Bangkok", "Thailand", "Winter"), ("Bali", "Indonesia", "Summer"),
    ("Singapore", "Singapore", "Spring"), ("Hong Kong", "China", "Autumn"), ("Tokyo", "Japan", "Spring"),
    ("Kyoto", "Japan", "Autumn"), ("Seoul", "South Korea", "Autumn"), ("Sydney", "Australia", "Summer"),
    ("Melbourne", "Australia", "Autumn"), ("Auckland", "New Zealand", "Summer"), ("Queenstown", "New Zealand", "Winter"),
    ("Honolulu", "United States", "Summer"), ("New York", "United States", "Autumn"), ("San Francisco", "United States", "Autumn"),
    ("Las Vegas", "United States", "Spring"), ("Vancouver", "Canada", "Summer"), ("Banff", "Canada", "Winter"),
    ("Mexico City", "Mexico", "Spring"), ("Cancun", "Mexico", "Winter"), ("Havana", "Cuba", "Winter"),
    ("Rio de Janeiro", "Brazil", "Summer"), ("Buenos Aires", "Argentina", "Spring"), ("Cusco", "Peru", "Winter"),
    ("Santiago", "Chile", "Autumn"), ("Maldives", "Maldives", "Winter"),
]
FIRST_NAMES = ["Olivia", "Liam", "Emma", "Noah", "Amelia", "Oliver", "Ava", "Elijah", "Sophia", "James",
               "Isabella", "William", "Mia", "Lucas", "Charlotte", "Mateo", "Aisha", "Wei", "Priya", "Kenji",
               "Fatima", "Diego", "Chloe", "Omar", "Sofia", "Arjun", "Yuki", "Ingrid", "Kwame", "Zoe"]
LAST_NAMES = ["Smith", "Johnson", "Garcia", "Brown", "Jones", "Miller", "Davis", "Martinez", "Lopez", "Wilson",
              "Anderson", "Thomas", "Taylor", "Moore", "Khan", "Chen", "Patel", "Tanaka", "Nguyen", "Okafor",
              "Silva", "Rossi", "Muller", "Dubois", "Novak", "Hansen", "O'Brien", "Kowalski", "Haddad", "Kim"]
DATE_STYLES = ("%Y-%m-%d", "%Y/%m/%d", "%B %d, %Y", "%Y-%m-%d %H:%M:%S")

# (table, row as in the file, what the cleansing should do with it)
DIRTY_ROWS = [
    ("customer", ["{c1}", "  Ada ", "Lovelace", " ADA.Lovelace@Example.COM ", "555-0100"], "trimmed, e-mail lower-cased"),
    ("customer", ["{c2}", "Alan", "Turing", "", "555-0101"], "rejected: missing_field (email)"),
    ("customer", ["{c1}", "Ada", "Byron", "ada.byron@example.com", "555-0102"], "rejected: duplicate_key"),
    ("customer", ["{c3}", "Grace", "Hopper", "ada.lovelace@example.com", ""], "rejected: duplicate_email"),
    ("destination", ["51", "Kraków", "Poland", "autumn"], "season capitalised to Autumn"),
    ("destination", ["52", "Atlantis", "Nowhere", "Monsoon"], "rejected: unknown_season"),
    ("booking", ["{b1}", "1", "June 3, 2023", "paris", "", "450.00"], "passengers imputed as 1"),
    ("booking", ["{b2}", "2", "2023/06/02", "  New   York ", "3", ""], "cost imputed with the median"),
    ("booking", ["{b3}", "3", "2023-02-30", "Rome", "2", "100.00"], "rejected: impossible_date"),
    ("booking", ["{b4}", "4", "2023-05-01", "Rome", "2", "-5.00"], "rejected: negative_cost"),
    ("booking", ["{b5}", "5", "2023-05-01", "Gotham", "1", "10.00"], "rejected: unknown_destination"),
    ("booking", ["{b1}", "6", "2023-05-01", "Rome", "1", "10.00"], "rejected: duplicate_key"),
    ("booking", ["{b6}", "999999", "2023-05-01", "Rome", "1", "10.00"], "rejected: unknown_customer"),
    ("booking", ["{b7}", "7", "2023-07-14", "kraków", "3", "33.33"], "loaded: total 99.99"),
]


def generate(customers: int, bookings: int, seed: int = 7) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    dest = pd.DataFrame(DESTINATIONS, columns=["destination", "country", "popular_season"])
    dest.insert(0, "destination_id", np.arange(1, len(dest) + 1))
    ids = np.arange(1, customers + 1)
    first = np.array(FIRST_NAMES)[rng.integers(0, len(FIRST_NAMES), customers)]
    last = np.array(LAST_NAMES)[rng.integers(0, len(LAST_NAMES), customers)]
    cust = pd.DataFrame({
        "customer_id": ids,
        "first_name": first,
        "last_name": last,
        "email": pd.Series(first).str.lower() + "." + pd.Series(last).str.lower().str.replace("'", "")
        + "." + pd.Series(ids).astype(str) + "@example.com",
        "phone": "555-" + pd.Series(rng.integers(0, 10_000_000, customers)).astype(str).str.zfill(7),
    })
    days = pd.to_datetime("2023-01-01") + pd.to_timedelta(rng.integers(0, 730, bookings), unit="D")
    styles = rng.integers(0, len(DATE_STYLES), bookings)
    dates = np.empty(bookings, dtype=object)
    for i, style in enumerate(DATE_STYLES):
        mask = styles == i
        dates[mask] = days[mask].strftime(style)
    book = pd.DataFrame({
        "booking_id": np.arange(1, bookings + 1),
        "customer_id": rng.integers(1, customers + 1, bookings),
        "booking_date": dates,
        "destination": dest["destination"].to_numpy()[rng.integers(0, len(dest), bookings)],
        "number_of_passengers": rng.integers(1, 7, bookings),
        "cost_per_passenger": (rng.integers(5_000, 500_000, bookings) / 100).round(2),
    })
    book["cost_per_passenger"] = book["cost_per_passenger"].map("{:.2f}".format)
    return {"customer": cust, "destination": dest, "booking": book}


def add_dirty_rows(frames: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    c, b = len(frames["customer"]), len(frames["booking"])
    slots = {"c1": c + 1, "c2": c + 2, "c3": c + 3, **{f"b{i}": b + i for i in range(1, 8)}}
    out = dict(frames)
    for table in ("customer", "destination", "booking"):
        rows = [[v.format(**slots) for v in row] for t, row, _ in DIRTY_ROWS if t == table]
        extra = pd.DataFrame(rows, columns=frames[table].columns)
        out[table] = pd.concat([frames[table].astype(str), extra], ignore_index=True)
    return out


def write(frames: dict[str, pd.DataFrame], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for table, frame in frames.items():
        # booking.csv keeps the unnamed index column the public dataset has.
        frame.to_csv(out / f"{table}.csv", index=(table == "booking"), lineterminator="\n")


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=positive, metavar="N", help="N customers and N bookings")
    parser.add_argument("--customers", type=positive, default=200)
    parser.add_argument("--bookings", type=positive, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--dirty", action="store_true", help="append the deliberately dirty rows")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.rows:
        args.customers = args.bookings = args.rows
    frames = generate(args.customers, args.bookings, args.seed)
    if args.dirty:
        frames = add_dirty_rows(frames)
    write(frames, args.out)
    print(f"wrote {', '.join(f'{len(f)} {t}' for t, f in frames.items())} rows to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
