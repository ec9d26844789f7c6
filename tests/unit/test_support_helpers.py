"""The test helpers that judge redis-cli output: an error reply is found, data that contains "ERR" is not one."""

from __future__ import annotations

from tests.support import redis_cli_errors


def test_error_replies_are_found_in_raw_and_no_raw_output() -> None:
    assert redis_cli_errors("ERR unknown command 'FOO', with args beginning with: \n") == [
        "ERR unknown command 'FOO', with args beginning with: "
    ]
    assert redis_cli_errors("1-0\n(error) WRONGTYPE Operation against a key\n") == [
        "(error) WRONGTYPE Operation against a key"
    ]
    assert redis_cli_errors("NOPERM this user has no permissions") == [
        "NOPERM this user has no permissions"
    ]


def test_data_that_contains_err_is_not_an_error() -> None:
    # a ULID in an event id once held "ERR" and failed a test that looked for the substring
    log = "1-0\ntype\nstep_created\nid\nevnt_01M8PHZEAXYKEDPKDC2NERR9J3R\nerror\nERRATA\n"
    assert redis_cli_errors(log) == []
