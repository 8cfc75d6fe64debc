"""Order documents: realistic values from Faker plus the awkward BSON types a CDC pipeline meets.

Pure: no I/O and no clock. Faker is seeded per instance and only used up front to fill pools of
names, addresses and words (Faker costs tens of microseconds per call, too slow for thousands of
documents a second); per-document choices come from the caller's ``random.Random``. Faker's
relative-date helpers read the clock, so dates are computed here from a fixed epoch instead.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
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

from lakeward.generate.ids import uuid4_binary

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
_ITEM_COUNTS = (0, 1, 1, 2, 2, 3, 4, 6)
_TAG_COUNTS = (0, 0, 1, 2, 3)
_BORN_FROM = datetime(1925, 1, 1, tzinfo=UTC)


def decimal128(coefficient: int, exponent: int = 0, negative: bool = False) -> Decimal128:
    """``(-1)**negative * coefficient * 10**exponent`` as Decimal128, built from its bits.

    Four times faster than ``Decimal128(str)``, which parses in pure Python and was the largest
    single cost of a document. Needs 0 <= coefficient < 10**34 and -6176 <= exponent <= 6111,
    where the IEEE 754 BID layout is: sign, 14-bit biased exponent, 113-bit coefficient.
    """
    high = (negative << 63) | ((exponent + 6176) << 49) | (coefficient >> 64)
    low = coefficient & 0xFFFF_FFFF_FFFF_FFFF
    return Decimal128.from_bid(low.to_bytes(8, "little") + high.to_bytes(8, "little"))


class DocumentFactory:
    """Builds order documents and update specs; `drift_stage` 0..4 changes the shape over time.

    Drift stages (cumulative): 1 new fields appear (`channel`, `loyalty`); 2 nesting deepens
    (`customer.address.location...`, `metadata` four levels deep); 3 `items[].price` turns from
    double to string and `items[].qty` from int32 to Decimal128; 4 `status` turns from a string
    into a sub-document.
    """

    def __init__(self, seed: int, rng: random.Random, *, extreme_dates: bool = False) -> None:
        self._rng = rng
        # Per-document draws use random() rather than randrange()/choice(): a third of the cost,
        # and the 53-bit resolution is ample for picking from small ranges.
        self._random = rng.random
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
        rnd = self._random
        pick = self._pick
        now = self.clock(tick)
        items = []
        total_cents = 0
        for _ in range(pick(_ITEM_COUNTS)):
            item, cents = self.item(stage)
            items.append(item)
            total_cents += cents
        doc: dict[str, Any] = {
            "_id": id_,
            "order_no": f"ORD-{n + 1:010d}",
            "status": self.status(now, stage),
            "created_at": now,
            "updated_at": now,
            "customer": self.customer(stage),
            "items": items,
            "total": decimal128(total_cents, -2),
            "currency": pick(_CURRENCIES),
            "revision": Int64(0),
            "tags": self._rng.sample(self._words, pick(_TAG_COUNTS)),
            "notes": pick(self._sentences) if rnd() < 0.6 else None,
            "flags": {} if rnd() < 0.3 else self.flags(),
            "store_id": pick(self._store_ids),
            "ledger": self.ledger(),
            "synced_at": Timestamp(int(now.timestamp()), 1 + int(rnd() * 999)),
        }
        self._add_awkward(doc)
        if stage >= 1:
            doc["channel"] = pick(_CHANNELS)
            doc["loyalty"] = {"tier": pick(_TIERS), "points": int(rnd() * 50_000)}
        if stage >= 2:
            os_ = {"name": pick(("ios", "android", "linux")), "major": 1 + int(rnd() * 19)}
            ip = f"10.{int(rnd() * 256)}.{int(rnd() * 256)}.{1 + int(rnd() * 254)}"
            doc["metadata"] = {"source": {"device": {"os": os_}, "ip_v4": ip}}
        return doc

    def _pick(self, seq: Any) -> Any:
        return seq[int(self._random() * len(seq))]

    def clock(self, tick: int) -> datetime:
        """The generated time of operation number `tick` (whole milliseconds, as BSON stores)."""
        return EPOCH + timedelta(milliseconds=tick * 200 + int(self._random() * 200))

    def status(self, now: datetime, stage: int) -> Any:
        code = self._pick(_STATUSES)
        if stage >= 4:
            return {"code": code, "since": now}
        return code

    def customer(self, stage: int) -> dict[str, Any]:
        rnd = self._random
        pick = self._pick
        i = int(rnd() * _POOL)
        address: dict[str, Any] = {
            "street": pick(self._streets),
            "city": pick(self._cities),
            "postcode": pick(self._postcodes),
            "country": pick(self._countries),
        }
        geo = {"lat": round(rnd() * 180 - 90, 6), "lon": round(rnd() * 360 - 180, 6)}
        if stage >= 2:
            source = {"provider": "gps", "at": self.clock(i)}
            accuracy = {"meters": 1 + int(rnd() * 499), "source": source}
            address["location"] = {"geo": geo, "accuracy": accuracy}
        else:
            address["geo"] = geo
        return {
            "id": uuid4_binary(self._rng),
            "name": self._names[i],
            "email": self._emails[i],
            "phone": self._phones[i] if rnd() < 0.8 else None,
            # Birthdays from 1925 on: most fall before the Unix epoch (negative BSON dates).
            "born": _BORN_FROM + timedelta(days=int(rnd() * 29_000)),
            "vip": rnd() < 0.1,
            "address": address,
        }

    def item(self, stage: int) -> tuple[dict[str, Any], int]:
        """An order line and its amount in cents."""
        rnd = self._random
        cents = 50 + int(rnd() * 249_950)
        qty = 1 + int(rnd() * 9)
        item: dict[str, Any] = {
            "sku": f"SKU-{int(rnd() * 100_000):05d}",
            "name": self._pick(self._products),
            "qty": decimal128(qty) if stage >= 3 else qty,
            "price": f"{cents // 100}.{cents % 100:02d}" if stage >= 3 else cents / 100,
        }
        if rnd() < 0.1:
            item["options"] = {}
        return item, cents * qty

    def ledger(self) -> dict[str, Any]:
        rnd = self._random
        roll = rnd()
        if roll < 0.03:
            entry = INT64_MAX
        elif roll < 0.06:
            entry = INT64_MIN
        else:
            entry = self._rng.getrandbits(40)
        rate_roll = rnd()
        if rate_roll < 0.02:
            rate = NAN
        elif rate_roll < 0.04:
            rate = float("inf") if rate_roll < 0.03 else float("-inf")
        elif rate_roll < 0.05:
            rate = -0.0
        else:
            rate = 0.5 + rnd() * 1.5
        balance = self.decimal34() if rnd() < 0.2 else decimal128(int(rnd() * 10**11), -2)
        seq32 = self._pick((INT32_MAX, INT32_MIN)) if rnd() < 0.02 else int(rnd() * 10_000)
        return {"entry": Int64(entry), "balance": balance, "rate": rate, "seq32": seq32}

    def decimal34(self) -> Decimal128:
        """A Decimal128 using all 34 significant digits, sometimes with a large exponent."""
        r = self._rng
        coefficient = r.randrange(10**33, 10**34)
        exponent = self._pick((-2, -10, -20, 0, 5, -6000, 6000))
        return decimal128(coefficient, exponent, negative=self._random() < 0.2)

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
            spec["$push"] = {"items": self.item(stage)[0]}
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
