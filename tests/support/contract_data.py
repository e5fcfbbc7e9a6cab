"""The small database the cross-stage contract tests export (and the Parquet export tests
reuse): every kind of value the export and the Lambda must agree on."""

from __future__ import annotations

from support.database import query

DESTINATIONS = [  # destination_id, destination, country, popular_season
    (1, "Paris", "France", "Spring"),
    (2, "Springfield", "United States", "Summer"),
    (3, "Springfield", "Australia", "Winter"),
    (4, "Nan", "Thailand", "Winter"),  # a real town, not a missing value
    (5, "Atlantis", "Nowhere", "Summer"),  # no bookings
    (6, "São Paulo, SP", "Brasil", "Autumn"),
    (7, 'Zürich "Altstadt"', "Schweiz", "Winter"),
    (9000000000000000001, "京都", "日本", "Autumn"),  # a BIGINT id
    (10, "NA", "NA", "Spring"),  # not missing either
]
CUSTOMERS = [  # customer_id, first_name, last_name, email, phone
    (1, "Zoë", "O'Brien, Jr.", "zoe@example.com", "+44 20 7946 0000"),
    (2, "José", "Müller", "jose@example.com", None),
    (3, "李", "小龙", "li@example.com", "555-0100"),
    (4, "Anne", '"Nan" Smith', "anne@example.com", ""),
    (5, "Bob", "=HYPERLINK(\"x\")", "bob@example.com", "555-0101"),
    (6, "Eve", "Dupont-Durand", "eve@example.com", "555-0102"),
]
BOOKINGS = [  # booking_id, customer_id, destination_id, booking_date, passengers, cost, passengers/cost imputed
    (1, 1, 1, "2026-01-05", 2, "1234.50", False, False),
    (2, 2, 2, "2026-02-10", 1, "0.00", False, False),
    (3, 3, 3, "2026-03-15", 3, "33.33", False, False),
    (4, 4, 4, "2026-04-20", 1, "99.99", True, False),
    (5, 5, 6, "2026-05-25", 4, "250.25", False, True),
    (6, 6, 7, "2026-06-30", 2, "0.01", False, False),
    (7, 1, 9000000000000000001, "2026-07-04", 1000001, "9999989999.99", False, False),
    (8, 2, 9000000000000000001, "2026-08-08", 1, "9999999999.99", False, False),
    (9, 3, 10, "2026-09-09", 5, "10.10", False, False),
    (10, 4, 1, "2026-10-10", 1, "0.10", False, False),
    (11, 5, 1, "2026-11-11", 1, "0.20", False, False),
    (12, 6, 2, "2026-11-12", 7, "142.86", False, False),
    (13, 1, 6, "2026-11-13", 2147483647, "0.05", False, False),
]


def load_dataset(url: str) -> None:
    query(url, "INSERT INTO destination VALUES " + ", ".join(["(%s, %s, %s, %s)"] * len(DESTINATIONS)),
          [v for row in DESTINATIONS for v in row])
    query(url, "INSERT INTO customer VALUES " + ", ".join(["(%s, %s, %s, %s, %s)"] * len(CUSTOMERS)),
          [v for row in CUSTOMERS for v in row])
    query(url, "INSERT INTO booking (booking_id, customer_id, destination_id, booking_date, number_of_passengers,"
               " cost_per_passenger, total_booking_value, passengers_imputed, cost_imputed) VALUES "
          + ", ".join(["(%s, %s, %s, %s, %s, %s::numeric, %s * %s::numeric, %s, %s)"] * len(BOOKINGS)),
          [v for b in BOOKINGS for v in (*b[:6], b[4], b[5], *b[6:])])
