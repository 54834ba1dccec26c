"""CI regression of best configs: lock files (``tuner lock``), the pass rule and its statistics, ``tuner regress``."""

from tuner.ci.lock import build_lock, lock_study
from tuner.ci.lockfile import LockFile, dump_lock, read_lock
from tuner.ci.rule import Verdict, judge
from tuner.ci.runner import CaseResult, regress

__all__ = [
    "CaseResult",
    "LockFile",
    "Verdict",
    "build_lock",
    "dump_lock",
    "judge",
    "lock_study",
    "read_lock",
    "regress",
]
