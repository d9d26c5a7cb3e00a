"""Error types the CLI maps to exit codes (see README, "Exit codes")."""

from __future__ import annotations


class GlmoptError(Exception):
    """Base class: a one-line message meant for a person, and an exit code."""

    exit_code = 1


class RecipeError(GlmoptError):
    """The recipe is malformed: names the file, the field path and what was expected."""

    exit_code = 2

    def __init__(self, file: str, field: str, message: str):
        self.file, self.field, self.detail = file, field, message
        where = f"{file}: {field}: " if field else f"{file}: "
        super().__init__(where + message)


class InputError(GlmoptError):
    """An input the recipe points at (model folder, data file, artifact) is unusable."""

    exit_code = 2


class StageError(GlmoptError):
    """A stage ran and failed (numerics check, exporter, quantizer, I/O)."""

    exit_code = 4

    def __init__(self, stage: str, message: str):
        self.stage = stage
        super().__init__(f"stage '{stage}' failed: {message}")


class PublishError(GlmoptError):
    """The artifact could not be written (unwritable folder, full disk)."""

    exit_code = 4


class GateFailed(GlmoptError):
    """The build finished but missed an accuracy budget; the report is still written."""

    exit_code = 3

    def __init__(self, message: str, outcome: object = None):
        self.outcome = outcome  # the BuildOutcome of the published (not good) version
        super().__init__(message)
