"""The persistent job queue: training and portrait requests from many users, run by GPU workers."""

from engine.jobs.queue.base import (
    FINISHED,
    WAITING_FOR_SETUP,
    Job,
    JobQueue,
    Lease,
    LeaseLost,
    QueueLimit,
    QueuePosition,
)
from engine.jobs.queue.sqlite_queue import SqliteJobQueue, open_queue

__all__ = ["FINISHED", "WAITING_FOR_SETUP", "Job", "JobQueue", "Lease", "LeaseLost", "QueueLimit", "QueuePosition",
           "SqliteJobQueue", "open_queue"]
