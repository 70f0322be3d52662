"""The one error base class of ray_emer: every error a user can cause carries its CLI exit code.

``ray-emer`` catches :class:`RayEmerError` once, in ``cli.main``, prints ``ray-emer CMD: message`` on
stderr and exits with ``exit_code``. Library callers catch it (or a subclass) like any exception.
Subclasses keep the builtin base they had (``ValueError``, ``OSError``, ...) so ``except ValueError``
in callers still works.
"""

from __future__ import annotations


class RayEmerError(Exception):
    """An error in the user's input, data or environment (not a bug): message for people, exit code for shells."""

    exit_code = 2  # usage / input errors; 1 is reserved for "this one file is bad" (decode)


class TrainDataError(RayEmerError, ValueError):
    """A training stage has nothing (usable) to train on."""
