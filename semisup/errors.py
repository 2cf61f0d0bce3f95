"""Errors a user can cause. The CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """A problem with the user's input (data, config, paths): message says what and how to fix."""


class DataError(UserError):
    """Missing, corrupt or inconsistent dataset files, or an impossible split."""


class ConfigError(UserError):
    """Unknown config key, wrong value type or a value out of range."""


class LostRank(Exception):
    """Another process of a torchrun job died or stopped answering (a collective failed or timed out): the
    job cannot go on. Not the user's doing: the CLI prints one line and exits 1."""
