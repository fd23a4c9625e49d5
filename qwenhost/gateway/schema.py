"""The gateway's tables. Money is stored as integers so sums are exact on every database:
prices in micro-USD per million tokens, costs in nano-USD."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from qwenhost.gateway.widths import MODEL_NAME_MAX


class Base(DeclarativeBase):
    pass


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    # Limits for the whole project (None = no limit); keys may carry tighter ones.
    rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    monthly_budget_nusd: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    name: Mapped[str] = mapped_column(String(100), default="")
    # The visible part ("qh-" + 8 chars): shown in listings, and the lookup index for authentication.
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    salt: Mapped[str] = mapped_column(String(32))
    secret_hash: Mapped[str] = mapped_column(String(64))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    monthly_budget_nusd: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class ModelPrice(Base):
    """One price tier of a model: applies to requests whose prompt has at most ``up_to_tokens`` tokens
    (None = no upper bound). A model without tiers has one row with ``up_to_tokens`` None."""

    __tablename__ = "model_prices"
    __table_args__ = (UniqueConstraint("model", "up_to_tokens", name="uq_price_tier"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(String(MODEL_NAME_MAX), index=True)
    up_to_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    input_musd_per_m: Mapped[int] = mapped_column(BigInteger)
    cached_input_musd_per_m: Mapped[int] = mapped_column(BigInteger)
    output_musd_per_m: Mapped[int] = mapped_column(BigInteger)


class LocalCost(Base):
    """What running a local model costs per hour of hardware, and the cloud model to compare it with."""

    __tablename__ = "local_costs"
    model: Mapped[str] = mapped_column(String(MODEL_NAME_MAX), primary_key=True)
    hardware_musd_per_hour: Mapped[int] = mapped_column(BigInteger)
    compare_to: Mapped[str | None] = mapped_column(String(MODEL_NAME_MAX), nullable=True)


class UsageRecord(Base):
    __tablename__ = "usage"
    __table_args__ = (Index("ix_usage_project_time", "project_id", "created_at"),
                      Index("ix_usage_key_time", "key_id", "created_at"))
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    # The OpenAI response id: unique, so a row can never be written twice.
    request_id: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)
    project_id: Mapped[int] = mapped_column(Integer)
    key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    model: Mapped[str] = mapped_column(String(MODEL_NAME_MAX))
    backend: Mapped[str] = mapped_column(String(50))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    cached_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    cost_nusd: Mapped[int] = mapped_column(BigInteger)
    latency_ms: Mapped[int] = mapped_column(Integer)
    # completed | disconnected | failed
    status: Mapped[str] = mapped_column(String(20))


class AuditEvent(Base):
    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(100))  # "cli", "key:qh-abcd1234", "anonymous"
    action: Mapped[str] = mapped_column(String(50))  # project.create, key.revoke, auth.failed, ...
    project_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    detail: Mapped[str] = mapped_column(Text, default="")
    remote: Mapped[str] = mapped_column(String(64), default="")


class LimitCounter(Base):
    """Shared counters for rate limits when several processes share PostgreSQL and no Redis is configured."""

    __tablename__ = "limit_counters"
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime, index=True)


class Spend(Base):
    """Month-to-date spend per key and per project, kept in the same transaction as the ledger rows it sums,
    so budget checks read one row instead of summing the ledger."""

    __tablename__ = "spend"
    scope: Mapped[str] = mapped_column(String(10), primary_key=True)  # "key" | "project"
    scope_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    month: Mapped[str] = mapped_column(String(7), primary_key=True)  # "2026-11"
    cost_nusd: Mapped[int] = mapped_column(BigInteger, default=0)


class Meta(Base):
    """Facts about this installation, e.g. its id (namespaces shared Redis counters per database)."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(50), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))
