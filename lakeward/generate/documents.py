"""Order documents: realistic values from Faker plus the awkward BSON types a CDC pipeline meets.

Pure: no I/O and no clock. Faker is seeded per instance and only used up front to fill pools of
names, addresses and words (Faker costs tens of microseconds per call, too slow for thousands of
documents a second); per-document choices come from the caller's ``random.Random``. Faker's
relative-date helpers read the clock, so dates are computed here from a fixed epoch instead.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from bson.binary import Binary
from bson.datetime_ms import DatetimeMS
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.objectid import ObjectId
from bson.regex import Regex
from bson.timestamp import Timestamp
from faker import Faker

__all__ = ["MAX_DRIFT_STAGE", "DocumentFactory"]

# The generated clock: operation number t is stamped EPOCH + t * 200 ms (+ jitter), so runs
# reproduce and timestamps still move forward.
EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
INT32_MAX = 2**31 - 1
INT32_MIN = -(2**31)
# One shared NaN object: a dict holding it compares equal to itself (identity short-cut), so
# two generated documents with NaN in the same place compare equal.
NAN = float("nan")

MAX_DRIFT_STAGE = 4
_POOL = 512
_STATUSES = ("pending", "paid", "shipped", "delivered", "cancelled", "refunded")
_CURRENCIES = ("EUR", "USD", "GBP", "JPY", "CHF", "SEK")
_CHANNELS = ("web", "app", "store", "phone", "marketplace")
_TIERS = ("bronze", "silver", "gold", "platinum")
_PATTERNS = (("^ORD-[0-9]+$", ""), ("gift|present", "i"), ("^\\s*$", "m"), ("a.b", "s"))


def _ms(value: datetime) -> datetime:
    """Truncate to milliseconds: BSON dates have no microseconds, so values round-trip exactly."""
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


class DocumentFactory:
    """Builds order documents and update specs; `drift_stage` 0..4 changes the shape over time.

    Drift stages (cumulative): 1 new fields appear (`channel`, `loyalty`); 2 nesting deepens
    (`customer.address.location...`, `metadata` four levels deep); 3 `items[].price` turns from
    double to string and `items[].qty` from int32 to Decimal128; 4 `status` turns from a string
    into a sub-document.
    """

    def __init__(self, seed: int, rng: random.Random, *, extreme_dates: bool = False) -> None:
        self._rng = rng
        self.extreme_dates = extreme_dates
        fake = Faker("en_US")
        fake.seed_instance(seed)
        self._names = [fake.name() for _ in range(_POOL)]
        self._emails = [fake.email() for _ in range(_POOL)]
        self._phones = [fake.phone_number() for _ in range(_POOL)]
        self._streets = [fake.street_address() for _ in range(_POOL)]
        self._cities = [fake.city() for _ in range(_POOL)]
        self._postcodes = [fake.postcode() for _ in range(_POOL)]
        self._countries = [fake.country_code() for _ in range(64)]
        self._products = [fake.catch_phrase() for _ in range(_POOL)]
        self._words = [fake.word() for _ in range(128)]
        self._sentences = [fake.sentence() for _ in range(_POOL)]
        self._store_ids = [ObjectId(fake.binary(12)) for _ in range(32)]

    # ---- documents -----------------------------------------------------------------------------

    def document(self, id_: Any, n: int, tick: int, stage: int = 0) -> dict[str, Any]:
        """Document number `n` (for `order_no`), written by operation number `tick` (for its
        timestamps), with `_id` = `id_`, at drift stage `stage`."""
        r = self._rng
        now = self.clock(tick)
        items = [self.item(stage) for _ in range(r.choice((0, 1, 1, 2, 2, 3, 4, 6)))]
        doc: dict[str, Any] = {
            "_id": id_,
            "order_no": f"ORD-{n + 1:010d}",
            "status": self.status(now, stage),
            "created_at": now,
            "updated_at": now,
            "customer": self.customer(stage),
            "items": items,
            "total": self.total(items),
            "currency": r.choice(_CURRENCIES),
            "revision": Int64(0),
            "tags": r.sample(self._words, r.choice((0, 0, 1, 2, 3))),
            "notes": r.choice(self._sentences) if r.random() < 0.6 else None,
            "flags": {} if r.random() < 0.3 else self.flags(),
            "store_id": r.choice(self._store_ids),
            "ledger": self.ledger(),
            "synced_at": Timestamp(int(now.timestamp()), r.randrange(1, 1000)),
        }
        self._add_awkward(doc)
        if stage >= 1:
            doc["channel"] = r.choice(_CHANNELS)
            doc["loyalty"] = {"tier": r.choice(_TIERS), "points": r.randrange(0, 50_000)}
        if stage >= 2:
            os_ = {"name": r.choice(("ios", "android", "linux")), "major": r.randrange(1, 20)}
            ip = f"10.{r.randrange(256)}.{r.randrange(256)}.{r.randrange(1, 255)}"
            doc["metadata"] = {"source": {"device": {"os": os_}, "ip_v4": ip}}
        return doc

    def clock(self, tick: int) -> datetime:
        """The generated time of operation number `tick`."""
        return _ms(EPOCH + timedelta(milliseconds=tick * 200 + self._rng.randrange(200)))

    def status(self, now: datetime, stage: int) -> Any:
        code = self._rng.choice(_STATUSES)
        if stage >= 4:
            return {"code": code, "since": now}
        return code

    def customer(self, stage: int) -> dict[str, Any]:
        r = self._rng
        i = r.randrange(_POOL)
        address: dict[str, Any] = {
            "street": r.choice(self._streets),
            "city": r.choice(self._cities),
            "postcode": r.choice(self._postcodes),
            "country": r.choice(self._countries),
        }
        geo = {"lat": round(r.uniform(-90, 90), 6), "lon": round(r.uniform(-180, 180), 6)}
        if stage >= 2:
            source = {"provider": "gps", "at": self.clock(i)}
            accuracy = {"meters": r.randrange(1, 500), "source": source}
            address["location"] = {"geo": geo, "accuracy": accuracy}
        else:
            address["geo"] = geo
        return {
            "id": Binary.from_uuid(_uuid4(r)),
            "name": self._names[i],
            "email": self._emails[i],
            "phone": self._phones[i] if r.random() < 0.8 else None,
            # Birthdays from 1925 on: most fall before the Unix epoch (negative BSON dates).
            "born": _ms(datetime(1925, 1, 1, tzinfo=UTC) + timedelta(days=r.randrange(0, 29_000))),
            "vip": r.random() < 0.1,
            "address": address,
        }

    def item(self, stage: int) -> dict[str, Any]:
        r = self._rng
        cents = r.randrange(50, 250_000)
        qty = r.randrange(1, 10)
        item: dict[str, Any] = {
            "sku": f"SKU-{r.randrange(100_000):05d}",
            "name": r.choice(self._products),
            "qty": Decimal128(str(qty)) if stage >= 3 else qty,
            "price": f"{cents / 100:.2f}" if stage >= 3 else cents / 100,
        }
        if r.random() < 0.1:
            item["options"] = {}
        return item

    def total(self, items: list[dict[str, Any]]) -> Decimal128:
        total = sum((Decimal(str(i["price"])) * Decimal(str(i["qty"])) for i in items), Decimal(0))
        return Decimal128(total.quantize(Decimal("0.01")))

    def ledger(self) -> dict[str, Any]:
        r = self._rng
        roll = r.random()
        entry = INT64_MAX if roll < 0.03 else INT64_MIN if roll < 0.06 else r.randrange(2**40)
        rate_roll = r.random()
        if rate_roll < 0.02:
            rate = NAN
        elif rate_roll < 0.04:
            rate = float("inf") if rate_roll < 0.03 else float("-inf")
        elif rate_roll < 0.05:
            rate = -0.0
        else:
            rate = r.uniform(0.5, 2.0)
        if r.random() < 0.2:
            balance = self.decimal34()
        else:
            balance = Decimal128(f"{r.randrange(10**9)}.{r.randrange(100):02d}")
        seq32 = r.choice((INT32_MAX, INT32_MIN)) if r.random() < 0.02 else r.randrange(10_000)
        return {"entry": Int64(entry), "balance": balance, "rate": rate, "seq32": seq32}

    def decimal34(self) -> Decimal128:
        """A Decimal128 using all 34 significant digits, sometimes with a large exponent."""
        r = self._rng
        digits = str(r.randrange(10**33, 10**34))
        sign = "-" if r.random() < 0.2 else ""
        exponent = r.choice((-2, -10, -20, 0, 5, -6000, 6000))
        return Decimal128(f"{sign}{digits}E{exponent}")

    def _add_awkward(self, doc: dict[str, Any]) -> None:
        """Rarer fields, each absent from most documents, so readers see them come and go."""
        r = self._rng
        if r.random() < 0.15:
            year = r.choice((1066, 1815, 1899, 1950, 1969))
            doc["legacy_date"] = self.day(year)
        if r.random() < 0.15:
            doc["warranty_until"] = self.day(2300)
        if self.extreme_dates and r.random() < 0.02:
            # Outside Python's datetime range (years 1..9999): decodable only with
            # CodecOptions(datetime_conversion=DATETIME_AUTO or DATETIME_MS).
            doc["epoch_ms"] = DatetimeMS(r.choice((400_000_000_000_000, -400_000_000_000_000)))
        if r.random() < 0.1:
            doc["attachment"] = Binary(r.randbytes(r.randrange(0, 64)), 0)
        if r.random() < 0.1:
            pattern, flags = r.choice(_PATTERNS)
            doc["pattern"] = Regex(pattern, flags)
        roll = r.random()
        if roll < 0.02:
            doc["bound"] = MinKey() if roll < 0.01 else MaxKey()
        if r.random() < 0.1:
            doc["mixed"] = self.mixed_array()
        if r.random() < 0.05:
            doc["empty"] = {"doc": {}, "array": []}
        if r.random() < 0.05:
            doc["decimal_special"] = Decimal128(r.choice(("NaN", "Infinity", "-Infinity", "-0")))

    def day(self, year: int) -> datetime:
        r = self._rng
        return datetime(year, 1 + r.randrange(12), 1 + r.randrange(28), tzinfo=UTC)

    def flags(self) -> dict[str, bool]:
        r = self._rng
        return {"gift": r.random() < 0.2, "express": r.random() < 0.1}

    def mixed_array(self) -> list[Any]:
        r = self._rng
        pool: list[Any] = [
            r.randrange(100), "two", 3.5, True, None, {"k": r.randrange(10)}, [1, [2]],
            Decimal128("1.10"), Int64(r.randrange(2**40)), self.clock(r.randrange(1000)), [],
        ]  # fmt: skip
        return r.sample(pool, r.randrange(2, 6))

    # ---- updates -------------------------------------------------------------------------------

    def update(self, tick: int, stage: int) -> dict[str, Any]:
        """A $set/$inc/$push/$unset spec valid for any document this factory made."""
        r = self._rng
        now = self.clock(tick)
        spec: dict[str, Any] = {"$set": {"updated_at": now}, "$inc": {"revision": 1}}
        choice = r.randrange(6 if stage >= 1 else 5)
        if choice == 0:
            spec["$set"]["status"] = self.status(now, stage)
        elif choice == 1:
            spec["$push"] = {"items": self.item(stage)}
        elif choice == 2:
            spec["$unset"] = {r.choice(("notes", "flags.gift", "legacy_date", "attachment")): ""}
        elif choice == 3:
            spec["$set"]["customer.address.city"] = r.choice(self._cities)
            spec["$set"]["customer.vip"] = r.random() < 0.5
        elif choice == 4:
            spec["$set"]["ledger.balance"] = self.decimal34()
            spec["$push"] = {"tags": r.choice(self._words)}
        else:
            spec["$set"]["loyalty.points"] = r.randrange(0, 50_000)
            spec["$set"]["channel"] = r.choice(_CHANNELS)
        return spec


def _uuid4(r: random.Random) -> uuid.UUID:
    return uuid.UUID(int=r.getrandbits(128), version=4)
