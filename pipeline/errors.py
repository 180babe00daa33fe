"""User-facing errors: each carries one line that names the file, key or value and what to do."""
from __future__ import annotations


class GenemanError(Exception):
    """An error the CLI prints as one line (no traceback unless --debug) and exits on."""

    exit_code = 1


class ConfigError(GenemanError):
    """A preset, config file or ``--set`` override that does not fit the schema."""

    exit_code = 2


class InputError(GenemanError):
    """A photo, mask or run folder that cannot be used."""

    exit_code = 2


class DamagedResult(InputError):
    """A stage result in a run folder whose files do not match its ``DIGEST.json`` (altered, truncated, or
    saved without one), or that was built from other results than those now before it."""


class LockError(GenemanError):
    """Another live process is writing the run folder."""

    exit_code = 2


class StageNotBuilt(GenemanError):
    """The pipeline reached a stage whose training loop does not exist yet."""

    exit_code = 3


class StageFailed(GenemanError):
    """A stage raised; its traceback is in the stage folder's ``error.log``."""

    exit_code = 1


class Interrupted(GenemanError):
    """A stop signal arrived; the running stage wrote a checkpoint and the run can be resumed."""

    exit_code = 75  # EX_TEMPFAIL: try again later (resume)
