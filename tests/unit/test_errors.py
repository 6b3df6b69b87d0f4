"""Our errors carry what callers match on: ClickHouse's code and name, not message text."""

from __future__ import annotations

from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from feedbackloop.errors import ClickHouseError


def test_a_driver_error_keeps_the_servers_code_and_name() -> None:
    e = DatabaseError("Table x does not exist", code=60, name="UNKNOWN_TABLE")
    err = ClickHouseError.from_driver(e, "cannot read x")
    assert (err.code, err.name, str(err)) == (60, "UNKNOWN_TABLE", "cannot read x")


def test_code_and_name_are_read_from_the_text_when_the_driver_lost_them() -> None:
    text = (
        "Code: 81. DB::Exception: Database nope does not exist. (UNKNOWN_DATABASE) "
        "(version 24.8.1.1 (official build))"
    )
    err = ClickHouseError.from_driver(RuntimeError(text))
    assert (err.code, err.name) == (81, "UNKNOWN_DATABASE")
    assert str(err) == text


def test_an_error_without_a_server_answer_has_neither() -> None:
    err = ClickHouseError.from_driver(OperationalError("Connection refused (to 127.0.0.1)"))
    assert (err.code, err.name) == (None, None)
    # A parenthesised word in a message that is not a server error is not taken for a name.
    assert ClickHouseError.from_driver(ValueError("bad value (NOT_A_CODE)")).name is None


def test_wrapping_our_own_error_keeps_its_code_and_name() -> None:
    inner = ClickHouseError("x", code=60, name="UNKNOWN_TABLE")
    outer = ClickHouseError.from_driver(inner, "cannot list prompts: x")
    assert (outer.code, outer.name, str(outer)) == (60, "UNKNOWN_TABLE", "cannot list prompts: x")
