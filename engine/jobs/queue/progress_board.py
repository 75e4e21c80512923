"""Running jobs' progress, in a small database of its own beside the queue's (`<data>/progress.db`).

A member's progress line moves every 2 s. Written into the queue's database, each of those writes took
its write lock, which every enqueue, claim and lease beat waits for. Here they take none of it: a job's
heartbeat upserts its row (its own file, its own lock), and the queue lays the rows over the jobs it
reads, for the claim the job still has (a row left by a claim that ended is never shown).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from engine.jobs.queue.base import Job

BOARD_FILE = "progress.db"


class ProgressBoard:
    def __init__(self, data_dir: Path) -> None:
        # Autocommit: each write is its own short transaction on this file alone.
        self.db = sqlite3.connect(Path(data_dir) / BOARD_FILE, timeout=5, isolation_level=None,
                                  check_same_thread=False)
        self.db.execute("pragma journal_mode = wal")
        self.db.execute("pragma synchronous = normal")  # progress lost in a power cut is shown again 2 s later
        self.db.execute("create table if not exists progress (job_id integer primary key, token text not null, "
                        "progress real not null, text text not null)")

    def write(self, job_id: int, token: str, progress: float, text: str) -> None:
        self.db.execute("insert or replace into progress values (?, ?, ?, ?)",
                        [job_id, token, max(0.0, min(1.0, float(progress))), text[:200]])

    def read(self, job_ids: Iterable[int]) -> dict[int, tuple[str, float, str]]:
        """(claim token, progress, text) of each of these jobs that has a row."""
        ids = list(job_ids)
        if not ids:
            return {}
        marks = ", ".join("?" * len(ids))
        rows = self.db.execute(f"select job_id, token, progress, text from progress where job_id in ({marks})", ids)
        return {job_id: (token, progress, text) for job_id, token, progress, text in rows}

    def lay_over(self, jobs: list[Job], claims: dict[int, str]) -> list[Job]:
        """`jobs` with each running one's progress as its current claim (`claims`: job id -> token) last wrote it."""
        shown = self.read(claims) if claims else {}
        return [replace(job, progress=shown[job.id][1], progress_text=shown[job.id][2])
                if job.id in shown and shown[job.id][0] == claims[job.id] else job for job in jobs]

    def clear(self, job_id: int) -> None:
        self.db.execute("delete from progress where job_id = ?", [job_id])

    def close(self) -> None:
        self.db.close()
