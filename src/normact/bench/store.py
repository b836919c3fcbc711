"""The results store: one SQLite row per finished trial, written atomically, keyed by the spec's hash.

Resuming is asking the store which keys are done. A trial is inserted once, in its own transaction, by the
process that runs the benchmark (workers only compute); a kill at any moment leaves every committed trial
intact and no partial row, and ``INSERT OR IGNORE`` keeps a key from ever being stored twice.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS trials (
    key TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    status TEXT NOT NULL,
    spec TEXT NOT NULL,
    result TEXT NOT NULL,
    finished_at REAL NOT NULL
)
"""


class ResultStore:
    """SQLite results database (WAL journal: readers never block the writer)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.parent and not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(SCHEMA)
        self._db.commit()

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def done_keys(self) -> set[str]:
        return {row[0] for row in self._db.execute("SELECT key FROM trials")}

    def put(self, result: Mapping[str, Any]) -> bool:
        """Store a finished trial; ``False`` if its key was already stored (nothing is written twice)."""
        with self._db:  # one transaction
            cur = self._db.execute(
                "INSERT OR IGNORE INTO trials (key, label, status, spec, result, finished_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    result["key"],
                    result["label"],
                    result["status"],
                    json.dumps(result["spec"], sort_keys=True),
                    json.dumps(result, sort_keys=True),
                    time.time(),
                ),
            )
        return cur.rowcount == 1

    def results(self, keys: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Stored results (all, or those of ``keys``), in the order they finished."""
        rows = self._db.execute("SELECT key, result FROM trials ORDER BY finished_at, key").fetchall()
        wanted = None if keys is None else set(keys)
        return [json.loads(r) for k, r in rows if wanted is None or k in wanted]
