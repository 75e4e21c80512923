"""The SQLite store and the files that belong to its rows."""

from engine.store.store import (
    SCHEMA_VERSION,
    FaceModelRecord,
    ForgetReport,
    SelfieRecord,
    Store,
    UserRecord,
    check_user_id,
    equal_to,
)

__all__ = ["SCHEMA_VERSION", "FaceModelRecord", "ForgetReport", "SelfieRecord", "Store", "UserRecord", "check_user_id",
           "equal_to"]
