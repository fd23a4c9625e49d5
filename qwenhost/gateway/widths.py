"""Column widths that input is checked against before it reaches the database (PostgreSQL refuses what does
not fit; SQLite would store it). Apart from the schema so that the CLI can check them without importing
SQLAlchemy, which it loads only when a command opens the database."""

MODEL_NAME_MAX = 200  # model columns (prices, local costs, the ledger): String(MODEL_NAME_MAX)
INT32_MAX = 2_147_483_647  # INTEGER columns: rpm, tpm, tier bounds
