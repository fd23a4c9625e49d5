"""Column widths that input is checked against before it reaches the database (PostgreSQL refuses what does
not fit; SQLite would store it). Apart from the schema so that the CLI can check them without importing
SQLAlchemy, which it loads only when a command opens the database."""

MODEL_NAME_MAX = 200  # model columns (prices, local costs, the ledger): String(MODEL_NAME_MAX)
INT32_MAX = 2_147_483_647  # INTEGER columns: rpm, tpm, tier bounds


def check_model_name(model: str) -> None:
    """Raise ValueError, in words for the user, when a model name does not fit its columns."""
    if not model.strip():
        raise ValueError("the model name must not be empty")
    if len(model) > MODEL_NAME_MAX:
        raise ValueError(f"the model name must be at most {MODEL_NAME_MAX} characters (got {len(model)})")
