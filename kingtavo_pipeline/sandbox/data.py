"""Seeded, deterministic synthetic data for the sandbox, generated lazily one day at a time.

Every day's records come from an RNG seeded by (seed, source, merchant, day) alone, so a day looks
the same whatever window is asked for, and generating 24 months for 3 merchants stays fast. An
object's whole future is drawn when it is created (a schedule of status changes); what the APIs
show is that schedule cut at the sandbox clock ("now"), plus updates applied explicitly
(:meth:`World.update_salla_order`), so advancing the clock makes further updates appear.

Times are kept as int epoch seconds (memory); money as int cents (exact totals).
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

from kingtavo_pipeline.sandbox.config import SandboxConfig

RIYADH = timezone(timedelta(hours=3), "Asia/Riyadh")  # fixed +03:00, no DST: no tzdata needed
SAR = "SAR"
USD = "USD"
VAT_PERCENT = 15  # Saudi VAT, on lines and shipping
DAY_ORDINAL_BASE = 730_000  # keeps ids 9-10 digits (date(2026, 1, 1).toordinal() - base = 9_366)
ORDERS_PER_DAY_SLOT = 10_000  # Salla ids encode (day, sequence, merchant)
PRINTAVO_PER_DAY_SLOT = 1_000

# Saudi week: Thursday busiest, Friday quietest (Mon..Sun, mean 1.0)
DOW_SA = (1.0, 1.0, 1.05, 1.25, 0.7, 0.9, 1.1)
# US print shop: weekdays busy, weekends near zero (Mon..Sun, mean 1.0)
DOW_US = (1.35, 1.3, 1.3, 1.25, 1.2, 0.35, 0.25)
# online shopping peaks late in the evening
HOUR_WEIGHTS_SA = (3, 2, 1, 1, 1, 1, 2, 3, 4, 5, 6, 6, 6, 6, 6, 6, 7, 7, 8, 9, 10, 10, 9, 6)

SALLA_STATUSES: dict[str, tuple[int, str]] = {
    "payment_pending": (1473353380, "Awaiting Payment"),
    "under_review": (566146469, "Under Review"),
    "in_progress": (1939592358, "In Progress"),
    "shipped": (814202285, "Shipped"),
    "delivered": (1723506348, "Delivered"),
    "completed": (1298199463, "Completed"),
    "canceled": (525144736, "Canceled"),
    "restoring": (1548352431, "Restoring"),
    "restored": (1956875584, "Restored"),
}
SALLA_PAYMENT_METHODS = (
    ("mada", 30), ("credit_card", 20), ("apple_pay", 20), ("bank", 8), ("cod", 10), ("stc_pay", 5), ("tabby", 7),
)
FIRST_NAMES = (
    "Mohammed", "Abdullah", "Fahad", "Khalid", "Saad", "Faisal", "Omar", "Yousef", "Nasser", "Turki",
    "Noura", "Sara", "Reem", "Haya", "Lama", "Maha", "Aljawhara", "Dana", "Layan", "Ghada",
)
LAST_NAMES = (
    "Alqahtani", "Alharbi", "Alghamdi", "Alzahrani", "Aldosari", "Alotaibi", "Alshehri", "Almutairi",
    "Alanazi", "Alshammari", "Alsubaie", "Alyami", "Alomari", "Alrashidi", "Albalawi",
)
SA_CITIES = ("Riyadh", "Jeddah", "Dammam", "Makkah", "Madinah", "Khobar", "Abha", "Tabuk", "Taif", "Buraidah")
GULF = (("AE", "United Arab Emirates", "Dubai"), ("KW", "Kuwait", "Kuwait City"), ("BH", "Bahrain", "Manama"))
PRODUCT_WORDS = (
    ("Oud Perfume", "Fragrances"), ("Arabic Coffee Beans", "Coffee"), ("Dates Gift Box", "Food"),
    ("Cotton Thobe", "Clothing"), ("Silk Shemagh", "Clothing"), ("Abaya", "Clothing"),
    ("Incense Burner", "Home"), ("Prayer Mat", "Home"), ("Leather Wallet", "Accessories"),
    ("Smart Watch Strap", "Electronics"), ("Phone Case", "Electronics"), ("Saffron Tea", "Food"),
)
PRODUCT_VARIANTS = ("Classic", "Royal", "Premium", "Mini", "Family", "Deluxe", "Travel", "Limited")

PRINTAVO_STATUSES: tuple[tuple[str, str, str, str], ...] = (
    # id, name, color, type
    ("401001", "Quote", "#9e9e9e", "QUOTE"),
    ("401002", "Quote Sent", "#03a9f4", "QUOTE"),
    ("401003", "Quote Approved", "#8bc34a", "QUOTE"),
    ("401004", "Quote Declined", "#f44336", "QUOTE"),
    ("402001", "Order Confirmed", "#3f51b5", "INVOICE"),
    ("402002", "Artwork Approval", "#ff9800", "INVOICE"),
    ("402003", "In Production", "#9c27b0", "INVOICE"),
    ("402004", "Ready for Pickup", "#009688", "INVOICE"),
    ("402005", "Shipped", "#00bcd4", "INVOICE"),
    ("402006", "Completed", "#4caf50", "INVOICE"),
    ("402007", "Cancelled", "#f44336", "INVOICE"),
)
PRINTAVO_STATUS_INDEX = {s[1]: i for i, s in enumerate(PRINTAVO_STATUSES)}
PRINTAVO_GARMENTS = (
    ("Gildan 5000 Heavy Cotton Tee", "G500", "T-Shirts", True),
    ("Bella+Canvas 3001 Jersey Tee", "BC3001", "T-Shirts", True),
    ("Gildan 18500 Hooded Sweatshirt", "G185", "Hoodies", True),
    ("Port Authority K500 Polo", "K500", "Polos", True),
    ("Richardson 112 Trucker Cap", "R112", "Hats", False),
    ("Liberty Bags 8502 Tote", "LB8502", "Bags", False),
)
PRINTAVO_CATEGORIES = ("T-Shirts", "Hoodies", "Polos", "Hats", "Bags")
PRINTAVO_COLORS = ("Black", "White", "Navy", "Heather Grey", "Red", "Royal Blue", "Forest Green")
APPAREL_SIZES = ("size_s", "size_m", "size_l", "size_xl", "size_2xl")
COMPANY_WORDS = (
    "Riverside", "Summit", "Lakeview", "Maple", "Granite", "Harbor", "Pioneer", "Cedar", "Union",
    "Liberty", "Northside", "Redwood", "Eastgate", "Bluebird", "Ironworks",
)
COMPANY_KINDS = ("High School", "Brewing Co.", "Fitness", "Church", "Little League", "Dental", "Roofing", "Cafe")
US_FIRST_NAMES = ("Emily", "Jacob", "Olivia", "Mason", "Ava", "Ethan", "Sophia", "Logan", "Mia", "Lucas")
US_LAST_NAMES = ("Smith", "Johnson", "Garcia", "Miller", "Davis", "Lopez", "Wilson", "Clark", "Young")
JOB_NAMES = ("Staff Shirts", "Event Tees", "Team Hoodies", "Merch", "Uniforms")
US_PLACES = (("Austin", "TX", "78701"), ("Denver", "CO", "80202"), ("Columbus", "OH", "43215"),
             ("Raleigh", "NC", "27601"), ("Portland", "OR", "97201"), ("Tampa", "FL", "33602"))


# ---------------------------------------------------------------- small helpers


def rng_for(*parts: object) -> random.Random:
    """An RNG seeded by a string: stable across processes (str seeds do not use hash randomisation)."""
    return random.Random(":".join(str(p) for p in parts))


def poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 40:  # normal approximation; Knuth's loop gets slow and underflows
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def amount(cents: int) -> int | float:
    """Money as the APIs print it: 150 for whole units, 150.5 otherwise."""
    return cents // 100 if cents % 100 == 0 else cents / 100


def money(cents: int, currency: str = SAR) -> dict[str, Any]:
    return {"amount": amount(cents), "currency": currency}


def salla_date(ts: int) -> dict[str, Any]:
    local = datetime.fromtimestamp(ts, RIYADH)
    return {"date": local.strftime("%Y-%m-%d %H:%M:%S.000000"), "timezone_type": 3, "timezone": "Asia/Riyadh"}


def iso_utc(ts: int) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def utc_date(ts: int) -> date:
    return datetime.fromtimestamp(ts, timezone.utc).date()


def riyadh_date(ts: int) -> date:
    return datetime.fromtimestamp(ts, RIYADH).date()


def day_start(day: date, tz: timezone) -> int:
    return int(datetime.combine(day, time(0), tz).timestamp())


def percent_of(cents: int, percent: float) -> int:
    """Round half up, in cents (what a shop's invoice shows)."""
    return int(math.floor(cents * percent / 100 + 0.5))


def season(day: date) -> float:
    """White Friday week and December sell more."""
    if day.month == 11 and day.day >= 20:
        return 1.8
    return 1.25 if day.month == 12 else 1.0


def daterange(start: date, end: date) -> Iterable[date]:
    for n in range((end - start).days + 1):
        yield start + timedelta(days=n)


# ---------------------------------------------------------------- Salla


@dataclass(slots=True, frozen=True)
class SallaCustomer:
    id: int
    first_name: str
    last_name: str
    email: str
    mobile: int
    gender: str
    city: str
    country: str
    country_code: str
    created_ts: int
    updated_ts: int


@dataclass(slots=True, frozen=True)
class SallaProduct:
    id: int
    name: str
    sku: str
    price_cents: int
    status: str
    quantity: int
    category_id: int
    category: str
    weight: float
    created_ts: int
    updated_ts: int


@dataclass(slots=True, frozen=True)
class SallaLine:
    id: int
    product_index: int
    quantity: int
    unit_cents: int
    discount_cents: int

    @property
    def net_cents(self) -> int:
        return self.unit_cents * self.quantity - self.discount_cents

    @property
    def tax_cents(self) -> int:
        return percent_of(self.net_cents, VAT_PERCENT)


@dataclass(slots=True, frozen=True)
class SallaOrder:
    """An order as created, with its drawn future: ``events`` are (epoch seconds, status slug or
    None for an edit that changes no status)."""

    id: int
    reference_id: int
    created_ts: int
    customer_index: int
    lines: tuple[SallaLine, ...]
    shipping_cents: int
    coupon: str | None
    discount_cents: int
    payment_method: str
    source_device: str
    events: tuple[tuple[int, str | None], ...]

    @property
    def sub_total_cents(self) -> int:
        return sum(line.unit_cents * line.quantity for line in self.lines)

    @property
    def tax_cents(self) -> int:
        return sum(line.tax_cents for line in self.lines) + percent_of(self.shipping_cents, VAT_PERCENT)

    @property
    def total_cents(self) -> int:
        return self.sub_total_cents - self.discount_cents + self.shipping_cents + self.tax_cents


def salla_order_id(day: date, seq: int, merchant_index: int) -> int:
    return ((day.toordinal() - DAY_ORDINAL_BASE) * ORDERS_PER_DAY_SLOT + seq) * 10 + merchant_index


def decode_salla_order_id(order_id: int) -> tuple[date, int, int]:
    """(creation day, sequence, merchant index) encoded in an order id."""
    rest, merchant_index = divmod(order_id, 10)
    day_number, seq = divmod(rest, ORDERS_PER_DAY_SLOT)
    return date.fromordinal(day_number + DAY_ORDINAL_BASE), seq, merchant_index


class SallaMerchant:
    """One store: its customers and products (drawn up front) and its orders (per day, cached)."""

    def __init__(self, config: SandboxConfig, index: int, merchant_id: str):
        self.config = config
        self.index = index
        self.merchant_id = merchant_id
        rng = rng_for("salla-merchant", config.seed, index)
        self.name = f"{rng.choice(PRODUCT_VARIANTS)} {rng.choice(COMPANY_WORDS)} Store"
        self.first_day = config.today - timedelta(days=config.days - 1)
        self.shipping_fee_cents = rng.choice((1500, 2500, 3000))
        self.products = self._products(rng)
        self.customers = self._customers(rng)
        self._days: dict[date, tuple[SallaOrder, ...]] = {}
        self._lock = threading.Lock()

    # -- catalogue and customers (static over time)

    def _products(self, rng: random.Random) -> list[SallaProduct]:
        out = []
        start = day_start(self.first_day, RIYADH)
        end = day_start(self.config.today, RIYADH)
        for i in range(rng.randint(30, 80)):
            base, category = PRODUCT_WORDS[rng.randrange(len(PRODUCT_WORDS))]
            variant = PRODUCT_VARIANTS[rng.randrange(len(PRODUCT_VARIANTS))]
            created = start - rng.randint(1, 400) * 86400 + rng.randrange(86400)
            status = rng.choices(("sale", "out", "hidden", "deleted"), (88, 6, 4, 2))[0]
            out.append(
                SallaProduct(
                    id=1_500_000_000 + self.index * 1_000_000 + i,
                    name=f"{variant} {base}",
                    sku=f"SKU-{self.index}{i:04d}",
                    price_cents=rng.randint(15, 900) * 100 + rng.choice((0, 0, 50, 95)),
                    status=status,
                    quantity=0 if status == "out" else rng.randint(1, 400),
                    category_id=1_000_000 + PRODUCT_WORDS.index((base, category)),
                    category=category,
                    weight=round(rng.uniform(0.1, 3.0), 2),
                    created_ts=created,
                    updated_ts=min(end, created + rng.randint(0, 600) * 86400),
                )
            )
        return out

    def _customer_count(self) -> int:
        # about one customer per six orders over the window: most customers come back
        return max(30, int(self.config.orders_per_day * self.config.days / 6))

    def _pre_existing(self) -> int:
        return max(1, self._customer_count() // 10)

    def _customers(self, rng: random.Random) -> list[SallaCustomer]:
        out = []
        n, pre = self._customer_count(), self._pre_existing()
        first = day_start(self.first_day, RIYADH)
        end = day_start(self.config.today, RIYADH) + 86399
        for i in range(n):
            if i < pre:
                created = first - rng.randint(1, 365) * 86400 + rng.randrange(3600)
            else:
                offset = (i - pre) * self.config.days // (n - pre)
                created = first + offset * 86400 + (i % 60)
            first_name = FIRST_NAMES[rng.randrange(len(FIRST_NAMES))]
            last_name = LAST_NAMES[rng.randrange(len(LAST_NAMES))]
            if rng.random() < 0.08:
                code, country, city = GULF[rng.randrange(len(GULF))]
            else:
                code, country, city = "SA", "Saudi Arabia", SA_CITIES[rng.randrange(len(SA_CITIES))]
            cid = 1_100_000_000 + self.index * 10_000_000 + i
            out.append(
                SallaCustomer(
                    id=cid,
                    first_name=first_name,
                    last_name=last_name,
                    email=f"{first_name.lower()}.{last_name.lower()}{i}@example.com",
                    mobile=int(f"5{rng.randrange(10**8):08d}"),
                    gender="female" if FIRST_NAMES.index(first_name) >= 10 else "male",
                    city=city,
                    country=country,
                    country_code=code,
                    created_ts=created,
                    updated_ts=min(end, max(created, created + rng.randint(0, 200) * 86400)),
                )
            )
        return out

    def customers_visible(self, now_ts: int) -> list[SallaCustomer]:
        return [c for c in self.customers if c.created_ts <= now_ts]

    def _customers_known_on(self, day: date) -> int:
        n, pre = self._customer_count(), self._pre_existing()
        offset = (day - self.first_day).days
        if offset < 0:
            return pre
        return pre + min(n - pre, math.ceil((offset + 1) * (n - pre) / self.config.days))

    # -- orders

    def orders_on(self, day: date) -> tuple[SallaOrder, ...]:
        orders = self._days.get(day)
        if orders is None:
            orders = self._generate_day(day)
            with self._lock:
                self._days[day] = orders
        return orders

    def order(self, order_id: int) -> SallaOrder | None:
        try:
            day, seq, merchant_index = decode_salla_order_id(int(order_id))
        except (ValueError, OverflowError):
            return None
        if merchant_index != self.index or seq < 1:
            return None
        orders = self.orders_on(day)
        return orders[seq - 1] if seq <= len(orders) else None

    def _generate_day(self, day: date) -> tuple[SallaOrder, ...]:
        c = self.config
        rng = rng_for("salla-orders", c.seed, self.index, day.isoformat())
        n = min(poisson(rng, c.orders_per_day * DOW_SA[day.weekday()] * season(day)), ORDERS_PER_DAY_SLOT - 1)
        seconds = sorted(rng.choices(range(24), HOUR_WEIGHTS_SA)[0] * 3600 + rng.randrange(3600) for _ in range(n))
        start = day_start(day, RIYADH)
        known = self._customers_known_on(day)
        return tuple(self._order(rng, day, seq, start + s, known) for seq, s in enumerate(seconds, 1))

    def _order(self, rng: random.Random, day: date, seq: int, created: int, known_customers: int) -> SallaOrder:
        order_id = salla_order_id(day, seq, self.index)
        k = rng.choices((1, 2, 3, 4, 5), (45, 25, 15, 10, 5))[0]
        picks = rng.sample(range(len(self.products)), min(k, len(self.products)))
        quantities = [rng.choices((1, 2, 3, 4), (70, 18, 8, 4))[0] for _ in picks]
        gross = [self.products[p].price_cents * q for p, q in zip(picks, quantities)]
        sub_total = sum(gross)
        coupon, discount = None, 0
        if rng.random() < 0.12:
            pct = rng.choice((10, 15, 20))
            coupon, discount = f"SAVE{pct}", percent_of(sub_total, pct)
        # the order's discount is spread over its lines in proportion; the last takes the rounding
        shares = [g * discount // sub_total for g in gross] if sub_total else [0] * len(gross)
        if shares:
            shares[-1] += discount - sum(shares)
        lines = tuple(
            SallaLine(
                id=order_id * 10 + i,
                product_index=p,
                quantity=q,
                unit_cents=self.products[p].price_cents,
                discount_cents=d,
            )
            for i, (p, q, d) in enumerate(zip(picks, quantities, shares), 1)
        )
        payment = rng.choices([m for m, _ in SALLA_PAYMENT_METHODS], [w for _, w in SALLA_PAYMENT_METHODS])[0]
        return SallaOrder(
            id=order_id,
            reference_id=(day.toordinal() - DAY_ORDINAL_BASE) * ORDERS_PER_DAY_SLOT + seq,  # per store
            created_ts=created,
            customer_index=int(known_customers * rng.random() ** 1.4),  # some customers return often
            lines=lines,
            shipping_cents=0 if sub_total - discount >= 30000 else self.shipping_fee_cents,
            coupon=coupon,
            discount_cents=discount,
            payment_method=payment,
            source_device=rng.choices(("mobile", "desktop", "app"), (60, 25, 15))[0],
            events=_salla_lifecycle(rng, created, payment),
        )


def _salla_lifecycle(rng: random.Random, created: int, payment: str) -> tuple[tuple[int, str | None], ...]:
    hour, day = 3600, 86400
    events: list[tuple[int, str | None]] = []
    t = created
    if payment == "bank":  # bank transfers wait for the merchant to confirm the payment
        events.append((t, "payment_pending"))
        t += rng.randint(hour, 36 * hour)
        if rng.random() < 0.2:
            events.append((t, "canceled"))
            return tuple(events)
    events.append((t, "under_review"))
    if rng.random() < 0.05:
        events.append((t + rng.randint(hour, 24 * hour), "canceled"))
        return tuple(events)
    t += rng.randint(hour, 24 * hour)
    events.append((t, "in_progress"))
    t += rng.randint(8 * hour, 72 * hour)
    events.append((t, "shipped"))
    t += rng.randint(day, 5 * day)
    events.append((t, "delivered"))
    t += rng.randint(2 * hour, 3 * day)
    events.append((t, "completed"))
    if rng.random() < 0.05:  # a return, weeks later
        t += rng.randint(5 * day, 40 * day)
        events.append((t, "restoring"))
        t += rng.randint(day, 5 * day)
        events.append((t, "restored"))
    if rng.random() < 0.1:  # an edit that changes no status (address, note)
        edit = created + rng.randint(60, max(61, t - created))
        events.append((edit, None))
        events.sort(key=lambda e: e[0])
    return tuple(events)


# ---------------------------------------------------------------- Printavo


@dataclass(slots=True, frozen=True)
class PrintavoContact:
    id: str
    first_name: str
    last_name: str
    email: str
    phone: str
    created_ts: int
    updated_ts: int


@dataclass(slots=True, frozen=True)
class PrintavoCustomer:
    index: int
    id: str
    company: str
    contacts: tuple[PrintavoContact, ...]
    tax_exempt: bool
    sales_tax: float
    address1: str
    city: str
    state: str
    zip_code: str
    created_ts: int
    updated_ts: int


@dataclass(slots=True, frozen=True)
class PrintavoLineItem:
    id: str
    position: int
    description: str
    item_number: str
    color: str
    category: str
    price_cents: int
    sizes: tuple[tuple[str, int], ...]

    @property
    def items(self) -> int:
        return sum(count for _, count in self.sizes)


@dataclass(slots=True, frozen=True)
class PrintavoGroup:
    id: str
    position: int
    line_items: tuple[PrintavoLineItem, ...]


@dataclass(slots=True, frozen=True)
class PrintavoOrder:
    """An invoice or quote with its drawn future: ``events`` are (epoch seconds, status index,
    share paid)."""

    id: str
    visual_id: str
    kind: str  # "Invoice" | "Quote"
    created_ts: int
    customer_index: int
    contact_index: int
    nickname: str
    groups: tuple[PrintavoGroup, ...]
    discount_percent: int
    start_ts: int
    due_ts: int
    tags: tuple[str, ...]
    events: tuple[tuple[int, int, float], ...]

    @property
    def subtotal_cents(self) -> int:
        return sum(li.price_cents * li.items for g in self.groups for li in g.line_items)

    @property
    def quantity(self) -> int:
        return sum(li.items for g in self.groups for li in g.line_items)


def printavo_category_id(name: str) -> str:
    return str(300_001 + PRINTAVO_CATEGORIES.index(name))


class PrintavoShop:
    """One Printavo account: customers with contacts (up front) and invoices/quotes (per day)."""

    def __init__(self, config: SandboxConfig):
        self.config = config
        self.first_day = config.today - timedelta(days=config.days - 1)
        self.customers = self._customers()
        self._days: dict[date, tuple[PrintavoOrder, ...]] = {}
        self._lock = threading.Lock()

    def _customers(self) -> list[PrintavoCustomer]:
        rng = rng_for("printavo-customers", self.config.seed)
        first = day_start(self.first_day, timezone.utc)
        end = day_start(self.config.today, timezone.utc) + 12 * 3600
        out = []
        for i in range(max(20, int(self.config.printavo_invoices_per_day * 60))):
            company = f"{rng.choice(COMPANY_WORDS)} {rng.choice(COMPANY_KINDS)}"
            created = first - rng.randint(1, 900) * 86400 + 13 * 3600 + rng.randrange(6 * 3600)
            contacts = []
            for k in range(rng.choices((1, 2, 3), (60, 30, 10))[0]):
                fn = rng.choice(US_FIRST_NAMES)
                ln = rng.choice(US_LAST_NAMES)
                contacts.append(
                    PrintavoContact(
                        id=str(6_000_000 + i * 10 + k),
                        first_name=fn,
                        last_name=ln,
                        email=f"{fn.lower()}.{ln.lower()}{i}{k}@example.org",
                        phone=f"({rng.randint(201, 989)}) 555-{rng.randrange(10000):04d}",
                        created_ts=created + k * 86400,
                        updated_ts=min(end, created + k * 86400 + rng.randint(0, 300) * 86400),
                    )
                )
            city, state, zip_code = rng.choice(US_PLACES)
            exempt = rng.random() < 0.15
            out.append(
                PrintavoCustomer(
                    index=i,
                    id=str(5_000_000 + i),
                    company=company,
                    contacts=tuple(contacts),
                    tax_exempt=exempt,
                    sales_tax=0.0 if exempt else rng.choice((6.25, 7.0, 8.25)),
                    address1=f"{rng.randint(10, 9999)} {rng.choice(COMPANY_WORDS)} St",
                    city=city,
                    state=state,
                    zip_code=zip_code,
                    created_ts=created,
                    updated_ts=min(end, created + rng.randint(0, 500) * 86400),
                )
            )
        return out

    def orders_on(self, day: date) -> tuple[PrintavoOrder, ...]:
        orders = self._days.get(day)
        if orders is None:
            orders = self._generate_day(day)
            with self._lock:
                self._days[day] = orders
        return orders

    def order(self, order_id: str) -> PrintavoOrder | None:
        try:
            number = int(order_id)
        except (TypeError, ValueError):
            return None
        day_number, seq = divmod(number, PRINTAVO_PER_DAY_SLOT)
        if seq < 1 or day_number <= 0:
            return None
        try:
            orders = self.orders_on(date.fromordinal(day_number + DAY_ORDINAL_BASE))
        except (ValueError, OverflowError):
            return None
        return orders[seq - 1] if seq <= len(orders) else None

    def _generate_day(self, day: date) -> tuple[PrintavoOrder, ...]:
        c = self.config
        rng = rng_for("printavo-orders", c.seed, day.isoformat())
        lam = c.printavo_invoices_per_day * DOW_US[day.weekday()]
        kinds = ["Invoice"] * poisson(rng, lam) + ["Quote"] * poisson(rng, lam * 0.5)
        rng.shuffle(kinds)
        kinds = kinds[: PRINTAVO_PER_DAY_SLOT - 1]
        # US business hours: 12:00-20:00 UTC, so a whole day is visible at the sandbox's end of day
        seconds = sorted(12 * 3600 + rng.randrange(8 * 3600) for _ in kinds)
        start = day_start(day, timezone.utc)
        return tuple(
            self._order(rng, day, seq, kind, start + s) for seq, (kind, s) in enumerate(zip(kinds, seconds), 1)
        )

    def _order(self, rng: random.Random, day: date, seq: int, kind: str, created: int) -> PrintavoOrder:
        number = (day.toordinal() - DAY_ORDINAL_BASE) * PRINTAVO_PER_DAY_SLOT + seq
        customer = self.customers[rng.randrange(len(self.customers))]
        groups = []
        for g in range(1, rng.choices((1, 2, 3), (70, 25, 5))[0] + 1):
            items = []
            for i in range(1, rng.choices((1, 2, 3, 4), (50, 30, 15, 5))[0] + 1):
                desc, item_number, category, apparel = rng.choice(PRINTAVO_GARMENTS)
                total = rng.choice((6, 12, 12, 24, 24, 36, 48, 72))
                if apparel:
                    weights = [rng.randint(1, 5) for _ in APPAREL_SIZES]
                    counts = [total * w // sum(weights) for w in weights]
                    counts[1] += total - sum(counts)
                    sizes = tuple((s, n) for s, n in zip(APPAREL_SIZES, counts) if n)
                else:
                    sizes = (("size_other", total),)
                items.append(
                    PrintavoLineItem(
                        id=str(number * 100 + g * 10 + i),
                        position=i,
                        description=desc,
                        item_number=item_number,
                        color=rng.choice(PRINTAVO_COLORS),
                        category=category,
                        price_cents=rng.randint(600, 3200),
                        sizes=sizes,
                    )
                )
            groups.append(PrintavoGroup(id=str(number * 10 + g), position=g, line_items=tuple(items)))
        start_ts = created + rng.randint(0, 3) * 86400
        due_ts = start_ts + rng.randint(5, 14) * 86400
        return PrintavoOrder(
            id=str(number),
            visual_id=str((day.toordinal() - 735_000) * PRINTAVO_PER_DAY_SLOT + seq),
            kind=kind,
            created_ts=created,
            customer_index=customer.index,
            contact_index=rng.randrange(len(customer.contacts)),
            nickname=f"{customer.company} {rng.choice(JOB_NAMES)}",
            groups=tuple(groups),
            discount_percent=rng.choice((5, 10)) if rng.random() < 0.1 else 0,
            start_ts=start_ts,
            due_ts=due_ts,
            tags=tuple(rng.sample(("rush", "reorder", "screenprint", "embroidery", "dtg"), rng.randint(0, 2))),
            events=_printavo_lifecycle(rng, kind, created, start_ts, due_ts),
        )


def _printavo_lifecycle(
    rng: random.Random, kind: str, created: int, start_ts: int, due_ts: int
) -> tuple[tuple[int, int, float], ...]:
    s = PRINTAVO_STATUS_INDEX
    hour, day = 3600, 86400
    if kind == "Quote":
        events = [(created, s["Quote"], 0.0)]
        t = created + rng.randint(hour, 48 * hour)
        events.append((t, s["Quote Sent"], 0.0))
        r = rng.random()
        if r < 0.6:
            events.append((t + rng.randint(hour, 10 * day), s["Quote Approved"], 0.0))
        elif r < 0.8:
            events.append((t + rng.randint(day, 20 * day), s["Quote Declined"], 0.0))
        return tuple(events)
    deposit = 0.5 if rng.random() < 0.4 else 0.0
    events = [(created, s["Order Confirmed"], deposit)]
    if rng.random() < 0.04:
        events.append((created + rng.randint(hour, 5 * day), s["Cancelled"], 0.0))
        return tuple(events)
    events.append((created + rng.randint(hour, 20 * hour), s["Artwork Approval"], deposit))
    events.append((max(start_ts, events[-1][0] + hour), s["In Production"], deposit))
    ready = max(due_ts - rng.randint(0, 2) * day, events[-1][0] + hour)
    events.append((ready, s["Shipped"] if rng.random() < 0.5 else s["Ready for Pickup"], deposit))
    events.append((ready + rng.randint(hour, 6 * day), s["Completed"], 1.0 if rng.random() < 0.9 else deposit))
    if events[-1][2] < 1.0:  # a late payment, weeks later
        events.append((events[-1][0] + rng.randint(10 * day, 45 * day), s["Completed"], 1.0))
    return tuple(events)
