"""Alembic environment: runs on the connection qwenhost hands over (see gateway/db.py)."""

from alembic import context

from qwenhost.gateway.schema import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
