"""Model prices per million tokens (input, cached input, output; optionally tiered by prompt length, like
Qwen3-Max's), the cost of one request, and what a million tokens cost on your own hardware."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from sqlalchemy import delete, select

from qwenhost.gateway.db import Database
from qwenhost.gateway.schema import LocalCost, ModelPrice
from qwenhost.gateway.widths import check_model_name

MICRO = Decimal(1_000_000)
CACHE_TTL_S = 10.0


# A billion dollars: budgets are stored in nano-USD in a 64-bit column (at most 9.2e18), prices in micro-USD.
MAX_USD = Decimal(1_000_000_000)


def usd_to_micro(value: str | float | Decimal, what: str = "price") -> int:
    """'1.2' (USD) -> 1_200_000 micro-USD; rejects what is not a non-negative amount."""
    try:
        d = Decimal(str(value))
    except ArithmeticError as exc:  # not a number, or an exponent beyond Decimal's range
        raise ValueError(f"{what} must be a number of US dollars, like 1.2 (got {value!r})") from exc
    if not d.is_finite() or d < 0:
        raise ValueError(f"{what} must be a finite, non-negative amount of US dollars (got {value!r})")
    if d > MAX_USD:
        raise ValueError(f"{what} must be at most {MAX_USD:,} US dollars (got {value!r})")
    return int((d * MICRO).to_integral_value(ROUND_HALF_UP))


def micro_to_usd(m: int) -> Decimal:
    return (Decimal(m) / MICRO).normalize()


def plain_decimal(d: Decimal) -> str:
    """An exact amount without exponent or trailing zeros: 0.0018, 25, 0.00000001 (for JSON, CSV and the audit
    log; str() of a Decimal writes 1E+2 and 1E-8)."""
    return "0" if d == 0 else format(d.normalize(), "f")


def removes_limit(value: object) -> bool:
    """A budget given as 'none' or 'off' (or JSON null) removes the limit."""
    return value is None or (isinstance(value, str) and value.strip().lower() in ("none", "off"))


def nano_to_usd(n: int) -> Decimal:
    return Decimal(n) / Decimal(1_000_000_000)


@dataclass(frozen=True)
class PriceTier:
    up_to_tokens: int | None
    input_musd: int
    cached_musd: int
    output_musd: int


def cost_nusd(tier: PriceTier, prompt: int, cached: int, completion: int) -> int:
    """Nano-USD for one request. micro-USD per million tokens == micro-micro-USD per token, so the
    product divided by 1000 is nano-USD; rounded half-up once per request."""
    cached = min(cached, prompt)
    pico = (prompt - cached) * tier.input_musd + cached * tier.cached_musd + completion * tier.output_musd
    return (pico + 500) // 1000


class PriceBook:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._tiers: dict[str, list[PriceTier]] = {}
        self._loaded_at = -1e9
        self._lock = threading.Lock()

    def set(self, model: str, *, input_usd: str, output_usd: str, cached_usd: str | None = None,
            up_to_tokens: int | None = None) -> PriceTier:
        check_model_name(model)
        if up_to_tokens is not None and up_to_tokens < 1:
            raise ValueError("up_to_tokens must be a positive number of prompt tokens")
        tier = PriceTier(up_to_tokens, usd_to_micro(input_usd, "input price"),
                         usd_to_micro(cached_usd if cached_usd is not None else input_usd, "cached input price"),
                         usd_to_micro(output_usd, "output price"))
        with self.db.session() as s:
            row = s.scalar(select(ModelPrice).where(ModelPrice.model == model,
                                                    ModelPrice.up_to_tokens.is_(None) if up_to_tokens is None
                                                    else ModelPrice.up_to_tokens == up_to_tokens))
            if row is None:
                row = ModelPrice(model=model, up_to_tokens=up_to_tokens)
                s.add(row)
            row.input_musd_per_m, row.cached_input_musd_per_m = tier.input_musd, tier.cached_musd
            row.output_musd_per_m = tier.output_musd
            s.commit()
        self._loaded_at = -1e9
        return tier

    def remove(self, model: str) -> int:
        with self.db.session() as s:
            n = s.execute(delete(ModelPrice).where(ModelPrice.model == model)).rowcount
            s.commit()
        self._loaded_at = -1e9
        return n or 0

    def all(self) -> dict[str, list[PriceTier]]:
        now = time.monotonic()
        if now - self._loaded_at > CACHE_TTL_S:
            with self._lock, self.db.session() as s:
                tiers: dict[str, list[PriceTier]] = {}
                for r in s.scalars(select(ModelPrice)):
                    tiers.setdefault(r.model, []).append(
                        PriceTier(r.up_to_tokens, r.input_musd_per_m, r.cached_input_musd_per_m, r.output_musd_per_m))
                for ts in tiers.values():
                    ts.sort(key=lambda t: (t.up_to_tokens is None, t.up_to_tokens or 0))
                self._tiers, self._loaded_at = tiers, now
        return self._tiers

    def tier_for(self, model: str, prompt_tokens: int) -> PriceTier | None:
        """The tier a prompt of this length is billed at; past the last bounded tier, the last tier."""
        tiers = self.all().get(model)
        if not tiers:
            return None
        for t in tiers:
            if t.up_to_tokens is None or prompt_tokens <= t.up_to_tokens:
                return t
        return tiers[-1]

    def cost(self, model: str, prompt: int, cached: int, completion: int) -> int:
        tier = self.tier_for(model, prompt)
        return 0 if tier is None else cost_nusd(tier, prompt, cached, completion)

    # -- own hardware
    def set_local_cost(self, model: str, hardware_usd_per_hour: str, compare_to: str | None = None) -> None:
        check_model_name(model)
        musd = usd_to_micro(hardware_usd_per_hour, "hardware cost per hour")
        with self.db.session() as s:
            row = s.get(LocalCost, model) or LocalCost(model=model)
            row.hardware_musd_per_hour, row.compare_to = musd, compare_to
            s.merge(row)
            s.commit()

    def remove_local_cost(self, model: str) -> bool:
        """Forget a model's hardware cost; False when none was recorded. Its ledger rows stay."""
        with self.db.session() as s:
            n = s.execute(delete(LocalCost).where(LocalCost.model == model)).rowcount
            s.commit()
        return bool(n)

    def local_costs(self) -> list[LocalCost]:
        with self.db.session() as s:
            return list(s.scalars(select(LocalCost).order_by(LocalCost.model)))


def usd_per_million(hardware_musd_per_hour: int, tokens_per_second: float) -> Decimal | None:
    """What a million tokens cost on hardware billed per hour, at a measured throughput."""
    if tokens_per_second <= 0:
        return None
    hours_per_million = Decimal(1_000_000) / Decimal(str(tokens_per_second)) / Decimal(3600)
    return (micro_to_usd(hardware_musd_per_hour) * hours_per_million).quantize(Decimal("0.0001"))
