"""Projects: the unit that owns keys, usage, limits and budgets."""

from __future__ import annotations

import re

from sqlalchemy import select

from qwenhost.gateway.db import Database
from qwenhost.gateway.schema import Project, utcnow

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
LIMIT_COLUMNS = {"rpm": "rpm", "tpm": "tpm", "budget_nusd": "monthly_budget_nusd"}


class ProjectStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, name: str, *, rpm: int | None = None, tpm: int | None = None,
               budget_nusd: int | None = None) -> Project:
        if not NAME_RE.match(name):
            raise ValueError(f"project name {name!r} is not valid: use 1-100 letters, digits, '.', '_' or '-', "
                             "starting with a letter or digit")
        with self.db.session() as s:
            if s.scalar(select(Project.id).where(Project.name == name)) is not None:
                raise ValueError(f"a project named {name!r} already exists")
            row = Project(name=name, rpm=rpm, tpm=tpm, monthly_budget_nusd=budget_nusd,
                          created_at=utcnow())
            s.add(row)
            s.commit()
            return row

    def get(self, ref: str | int) -> Project:
        """A project by name or id; KeyError saying so when there is none."""
        with self.db.session() as s:
            if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
                row = s.get(Project, int(ref))
                if row is None:
                    row = s.scalar(select(Project).where(Project.name == str(ref)))
            else:
                row = s.scalar(select(Project).where(Project.name == ref))
        if row is None:
            raise KeyError(f"no project {ref!r}; `qwenhost projects list` shows them")
        return row

    def ensure(self, name: str) -> Project:
        try:
            return self.get(name)
        except KeyError:
            return self.create(name)

    def list(self) -> list[Project]:
        with self.db.session() as s:
            return list(s.scalars(select(Project).order_by(Project.id)))

    def update_limits(self, ref: str | int, changes: dict[str, int | None], *, clear: bool = False) -> Project:
        """Set the limits named in ``changes`` (``rpm``, ``tpm``, ``budget_nusd``; None removes that limit) and
        keep the others, or with ``clear`` remove every limit first."""
        unknown = set(changes) - set(LIMIT_COLUMNS)
        if unknown:
            raise ValueError(f"unknown limits {sorted(unknown)}; use {', '.join(LIMIT_COLUMNS)}")
        proj = self.get(ref)
        with self.db.session() as s:
            row = s.get(Project, proj.id)
            assert row is not None
            for name, column in LIMIT_COLUMNS.items():
                if name in changes:
                    setattr(row, column, changes[name])
                elif clear:
                    setattr(row, column, None)
            s.commit()
            return row
