"""Projects: the unit that owns keys, usage, limits and budgets."""

from __future__ import annotations

import re

from sqlalchemy import select

from qwenhost.gateway.db import Database
from qwenhost.gateway.schema import Project, utcnow

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


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

    def update_limits(self, ref: str | int, *, rpm: int | None = None, tpm: int | None = None,
                      budget_nusd: int | None = None, clear: bool = False) -> Project:
        proj = self.get(ref)
        with self.db.session() as s:
            row = s.get(Project, proj.id)
            assert row is not None
            if clear:
                row.rpm = row.tpm = row.monthly_budget_nusd = None
            if rpm is not None:
                row.rpm = rpm
            if tpm is not None:
                row.tpm = tpm
            if budget_nusd is not None:
                row.monthly_budget_nusd = budget_nusd
            s.commit()
            return row
