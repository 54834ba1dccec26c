"""Errors meant for the user: the CLI prints them without a traceback and exits with ``exit_code``."""


class TunerError(Exception):
    """A problem with what the user asked for (bad input, unknown name, missing file)."""

    exit_code = 2


class UnknownNameError(TunerError, ValueError):
    """A name that is not in one of the tables; the message lists the valid names."""

    def __init__(self, kind: str, name: object, valid: list[str]) -> None:
        super().__init__(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(sorted(valid))}")
        self.kind, self.name, self.valid = kind, name, valid


def lookup(table: dict, kind: str, name: str):
    """``table[name]``, or an ``UnknownNameError`` listing the valid names."""
    try:
        return table[name]
    except (KeyError, TypeError):
        raise UnknownNameError(kind, name, list(table)) from None


class TrialPruned(Exception):
    """Raised by ``tuner.Trial.report`` when the study stops the trial (the pruner, or a diverged run): let it
    propagate out of your training function; the trial is recorded as pruned with the reason."""


class UserCodeError(Exception):
    """An exception raised in the user's own training code, described as ``Type: message (at file:line in fn)``."""
