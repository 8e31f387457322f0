"""The snapshot/VM name rule: what virsh may receive as a name."""

import re

import pytest

from vmcontroller.names import (
    NAME_MAX_LENGTH,
    NAME_PATTERN,
    NAME_RE,
    InvalidName,
    validate_name,
)


@pytest.mark.parametrize(
    "name",
    [
        "ready",
        "backup-2025-12-09-1030",
        "a",
        "A.b_c-1",
        "0",
        "x" * 64,
    ],
)
def test_valid_names_are_returned_unchanged(name):
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name, expected",
    [
        # options virsh would parse (argument injection)
        ("--current", "must start with an ASCII letter or digit (got '--current')"),
        ("-h", "must start with an ASCII letter or digit (got '-h')"),
        ("--", "must start with an ASCII letter or digit (got '--')"),
        ("", "cannot be empty"),
        ("a b", "may only contain ASCII letters, digits, '.', '_' and '-' (got 'a b')"),
        ("../x", "must start with an ASCII letter or digit (got '../x')"),
        ("a/b", "may only contain"),
        (".hidden", "must start with an ASCII letter or digit (got '.hidden')"),
        ("é✓", "must start with an ASCII letter or digit"),
        ("aé", "may only contain"),
        ("a\n", "may only contain ASCII letters, digits, '.', '_' and '-' (got 'a\\n')"),
        ("a;rm", "may only contain"),
        ("x" * 65, "must be at most 64 characters (got 65)"),
        ("x" * 300, "must be at most 64 characters (got 300)"),
    ],
)
def test_invalid_names_say_what_is_wrong(name, expected):
    with pytest.raises(InvalidName) as info:
        validate_name(name)
    message = str(info.value)
    assert message.startswith("Invalid parameter: snapshot_name ")
    assert expected in message


def test_none_is_empty():
    with pytest.raises(InvalidName, match="snapshot_name cannot be empty"):
        validate_name(None)


@pytest.mark.parametrize("value", [42, b"ready", ["ready"]])
def test_non_strings_are_rejected(value):
    with pytest.raises(InvalidName, match="must be a string"):
        validate_name(value)


def test_invalid_name_is_a_value_error():
    assert issubclass(InvalidName, ValueError)


def test_message_names_the_parameter():
    with pytest.raises(InvalidName, match="^Invalid parameter: vm_name "):
        validate_name("-x", what="vm_name")


def test_long_names_are_not_echoed():
    with pytest.raises(InvalidName) as info:
        validate_name("y" * 300)
    assert "yyyy" not in str(info.value)


def test_pattern_constants_agree_with_the_rule():
    assert NAME_MAX_LENGTH == 64
    assert NAME_PATTERN == r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
    assert NAME_RE.pattern == NAME_PATTERN
    assert NAME_RE.fullmatch("ready")
    # `$` alone would accept a trailing newline; the rule uses fullmatch
    assert re.match(NAME_PATTERN, "ready\n")
    assert not NAME_RE.fullmatch("ready\n")


@pytest.mark.parametrize(
    "name",
    [
        "ready",
        "a",
        "x" * 64,
        "x" * 65,
        "-a",
        "a b",
        "a\n",
        "é",
        ".a",
        "a..b",
        "A_",
        "9-",
        "a" * 63 + "\n",
    ],
)
def test_validator_and_regex_never_disagree(name):
    try:
        validate_name(name)
        accepted = True
    except InvalidName:
        accepted = False
    assert accepted == bool(NAME_RE.fullmatch(name))
