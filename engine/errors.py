"""Errors whose message is meant for a person: the CLI and the bot print them as they are."""


class FaceChainError(Exception):
    """A problem the user can act on. `str(error)` is one line saying what is wrong and what to do."""


class SettingsError(FaceChainError):
    """A setting has a wrong value."""


class NoUsableFace(FaceChainError):
    """A photo has no face the engine can work with."""


class ModelMissing(FaceChainError):
    """A model file or folder is not where the settings say."""
