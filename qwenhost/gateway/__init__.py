"""The gateway: who may call (projects, API keys), what it cost (prices, usage ledger), limits that hold
(rate limits, monthly budgets) and a record of who changed what (audit). SQLAlchemy on SQLite or PostgreSQL."""
