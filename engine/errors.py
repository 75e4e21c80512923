"""Errors whose message is meant for a person: the CLI and the bot print them as they are."""


class FaceChainError(Exception):
    """A problem the user can act on. `str(error)` is one line saying what is wrong and what to do."""


class SettingsError(FaceChainError):
    """A setting has a wrong value."""


class NoUsableFace(FaceChainError):
    """A photo has no face the engine can work with."""


class ModelMissing(FaceChainError):
    """A model file or folder is not where the settings say."""


class ModelUnavailable(ModelMissing):
    """A model the owner's settings name cannot be had right now (not downloaded and the hub is out
    of reach, too little disk, a wrong setting). It is the owner's to fix: `str(error)` says how,
    for the owner; members' jobs wait for it instead of failing, and they are told `MEMBER_TEXT`."""

    MEMBER_TEXT = ("the bot is not ready to make face models and portraits yet (its owner has been told). "
                   "Your photos are kept, and this starts by itself once it is ready.")

    def __init__(self, message: str, key: str = "models") -> None:
        super().__init__(message)
        self.key = key  # which setup problem this is: one incident (and one owner DM) per key
