"""Housekeeping on a schedule (APScheduler, started inside the bot process) or once from the CLI.

Daily quotas need no reset job: they count the jobs created since midnight UTC.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from engine.config import Settings
from engine.jobs.queue import SqliteJobQueue
from engine.store import Store
from engine.store.moderation import delete_old_audit
from engine.store.together import open_request_uploads

log = logging.getLogger(__name__)
TEMP_MAX_AGE_HOURS = 24


def cutoff(days: float) -> str:
    return (datetime.now(timezone.utc) - timedelta(days=days)).isoformat(timespec="seconds")


def reap_expired_leases(store: Store, settings: Settings) -> int:
    return SqliteJobQueue(store, settings).reap_expired()


def uploads_in_use(store: Store) -> set[Path]:
    """Photos a queued or running job, or a question not yet answered, still needs."""
    wanted = {Path(path) for path in open_request_uploads(store)}
    for (text,) in store.db.execute("select params from jobs where state in ('queued', 'running')"):
        params = json.loads(text or "{}")
        wanted |= {Path(p) for p in (params.get("upload"), params.get("pose_upload")) if p}
        wanted |= {Path(u["path"]) for u in params.get("uploads") or [] if u.get("path")}
    return {path.resolve() for path in wanted}


def delete_temp_files(store: Store, settings: Settings, max_age_hours: float = TEMP_MAX_AGE_HOURS) -> int:
    """Uploads and scratch files nobody picked up (a job that was cancelled before it ran, say). A photo an
    open question or a waiting job still needs stays, however old: it is deleted when they end."""
    folder = settings.data_dir / "tmp"
    if not folder.is_dir():
        return 0
    oldest = time.time() - max_age_hours * 3600
    in_use = uploads_in_use(store)
    removed = 0
    for path in folder.rglob("*"):
        if path.is_file() and path.stat().st_mtime < oldest and path.resolve() not in in_use:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def enforce_retention(store: Store, settings: Settings) -> dict[str, int]:
    """Delete portraits (unless shared to a gallery) and selfies older than the configured days."""
    removed = {"portraits": 0, "selfies": 0}
    if settings.portrait_retention_days:
        rows = list(store.db.query(
            "select id, path from portraits where created_at < ? and id not in "
            "(select portrait_id from gallery_entries where portrait_id is not null)",
            [cutoff(settings.portrait_retention_days)]))
        removed["portraits"] = _delete_rows(store, "portraits", rows)
    if settings.selfie_retention_days:
        rows = list(store.db.query("select id, path from selfies where created_at < ?",
                                   [cutoff(settings.selfie_retention_days)]))
        removed["selfies"] = _delete_rows(store, "selfies", rows)
    return removed


def _delete_rows(store: Store, table: str, rows: list[dict]) -> int:
    with store.transaction():
        for row in rows:
            store.db[table].delete(row["id"])
    for row in rows:
        if row["path"]:
            path = Path(row["path"])
            (path if path.is_absolute() else store.absolute(row["path"])).unlink(missing_ok=True)
    return len(rows)


def backup_database(store: Store, settings: Settings) -> Path:
    """A consistent copy of the live database (SQLite's backup API), keeping the newest few."""
    folder = settings.data_dir / "backups"
    folder.mkdir(mode=0o700, exist_ok=True)
    target = folder / f"facechain-{datetime.now(timezone.utc):%Y%m%d-%H%M%S-%f}.db"
    with sqlite3.connect(target) as copy:
        store.db.conn.backup(copy)
    copy.close()
    target.chmod(0o600)
    for old in sorted(folder.glob("facechain-*.db"))[: -settings.backups_kept]:
        old.unlink()
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.db.execute("VACUUM")
    return target


def run_all(store: Store, settings: Settings) -> dict:
    """Every task once; what `facechain maintenance` prints."""
    summary = {
        "leases_reaped": reap_expired_leases(store, settings),
        "temp_files_deleted": delete_temp_files(store, settings),
        "audit_lines_deleted": delete_old_audit(store),
        "retention": enforce_retention(store, settings),
    }
    if settings.backup_every_hours:
        summary["backup"] = str(backup_database(store, settings))
    return summary


def build_scheduler(settings: Settings):
    """An APScheduler BackgroundScheduler with every task; each run opens its own connection."""
    from apscheduler.schedulers.background import BackgroundScheduler

    def task(function):
        def run() -> None:
            store = Store(settings.data_dir)
            try:
                outcome = function(store, settings)
                log.info("maintenance %s: %s", function.__name__, outcome)
            except Exception:
                log.exception("maintenance task %s failed", function.__name__)
            finally:
                store.close()
        run.__name__ = function.__name__
        return run

    scheduler = BackgroundScheduler(timezone="UTC", job_defaults={"coalesce": True, "max_instances": 1})
    scheduler.add_job(task(reap_expired_leases), "interval", seconds=max(5, settings.job_lease_seconds // 2),
                      id="reap_expired_leases")
    scheduler.add_job(task(delete_temp_files), "interval", hours=1, id="delete_temp_files")
    scheduler.add_job(task(lambda store, s: delete_old_audit(store)), "interval", hours=24, id="delete_old_audit")
    scheduler.add_job(task(enforce_retention), "interval", hours=24, id="enforce_retention")
    if settings.backup_every_hours:
        scheduler.add_job(task(backup_database), "interval", hours=settings.backup_every_hours, id="backup_database")
    return scheduler
