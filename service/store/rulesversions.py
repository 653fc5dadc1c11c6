"""The rules files that loaded, kept: the fallback for a process that finds a broken one."""

from __future__ import annotations

from sqlalchemy import select, update

from .database import Database
from .guard import guarded
from .records import Row
from .tables import rules_versions


class RulesVersions:
    def __init__(self, db: Database):
        self.db = db

    @guarded
    def remember_rules(self, sha256: str, source: str, text: str) -> None:
        """Keep a rules file that loaded: the fallback for a process that finds a broken one."""
        now = self.db.clock()
        with self.db.write() as conn:
            done = conn.execute(update(rules_versions).where(rules_versions.c.sha256 == sha256)
                                .values(last_loaded_at=now)).rowcount
            if not done:
                conn.execute(self.db.insert(rules_versions).values(
                    sha256=sha256, source=source, text=text, first_loaded_at=now, last_loaded_at=now,
                ).on_conflict_do_nothing(index_elements=["sha256"]))

    @guarded
    def last_good_rules(self) -> Row | None:
        with self.db.read() as conn:
            row = conn.execute(select(rules_versions).order_by(rules_versions.c.last_loaded_at.desc())
                               .limit(1)).mappings().first()
            return dict(row) if row else None

    @guarded
    def rules_version(self, sha256: str) -> Row | None:
        with self.db.read() as conn:
            row = conn.execute(select(rules_versions).where(rules_versions.c.sha256 == sha256)).mappings().first()
            return dict(row) if row else None
