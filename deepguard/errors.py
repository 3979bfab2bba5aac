"""Errors that reach the user as one clear line (the CLI prints them without a traceback)."""


class DeepguardError(RuntimeError):
    """Base for every error caused by input, configuration or environment, not by a bug."""


class InputError(DeepguardError):
    """The input file cannot be protected: wrong type, corrupt, too large, unsupported."""


class OutputError(DeepguardError):
    """The output cannot be written: no such folder, no permission, a full disk."""


class SettingsError(DeepguardError):
    """An environment variable or ``.env`` entry has a value deepguard cannot use."""
