"""Errors a user can cause. Each carries one sentence: the cause and the fix."""


class TaylorlabError(Exception):
    """A user-facing error: the entry points print ``error: <message>`` on one line and exit 2."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class ConfigError(TaylorlabError):
    """A config key or value is invalid."""


class ArtifactError(TaylorlabError):
    """An artifact is missing, corrupt or half-written."""


class StageFailed(TaylorlabError):
    """A stage raised; the message names the stage, its log and the cause."""


class DeviceError(TaylorlabError):
    """A device was requested that this machine does not have."""
