"""Errors a user can cause. The CLI turns them into one message and exit status 2."""


class CloudbenchError(ValueError):
    """A problem with the user's input (a file, a config value, a name): not a bug."""


class StoreError(CloudbenchError):
    """A dataset folder that is missing, incomplete, corrupt or of another schema version."""
