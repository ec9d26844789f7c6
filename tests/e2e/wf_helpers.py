"""A helper module imported by a workflow: its error must keep this file's frames (crossFileError)."""

from __future__ import annotations


def throw_error() -> None:
    raise Exception("Error from imported helper module")


def call_thrower() -> None:
    throw_error()
