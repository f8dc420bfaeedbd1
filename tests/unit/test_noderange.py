"""Node ranges: expansion and folding over ClusterShell's NodeSet, behind our own gate."""

from __future__ import annotations

import time

import pytest

from fleet.errors import PatternError
from fleet.inventory.noderange import (
    COUNT_CAP,
    MAX_RANGE_HOSTS,
    count_range,
    expand_hosts,
    fold_hosts,
    name_problem,
)


def test_plain_name_expands_to_itself() -> None:
    assert expand_hosts("web01.example.com") == ["web01.example.com"]


def test_padded_range() -> None:
    assert expand_hosts("web[01-12]") == [f"web{i:02d}" for i in range(1, 13)]


def test_list_and_range() -> None:
    assert expand_hosts("db[1-3,7]") == ["db1", "db2", "db3", "db7"]


def test_two_dimensions() -> None:
    assert expand_hosts("rack[1-2]-node[01-04]") == [
        f"rack{r}-node{n:02d}" for r in (1, 2) for n in range(1, 5)
    ]


def test_range_with_suffix_and_step() -> None:
    assert expand_hosts("web[1-5/2].example.com") == [
        "web1.example.com",
        "web3.example.com",
        "web5.example.com",
    ]


def test_fold_example() -> None:
    assert fold_hosts(["web01", "web02", "web03", "web04", "web07"]) == "web[01-04,07]"


def test_fold_mixed_names_and_duplicates() -> None:
    assert fold_hosts(["db2", "web2", "db1", "db1", "localhost"]) == "db[1-2],localhost,web2"


def test_fold_empty() -> None:
    assert fold_hosts([]) == ""


def test_fold_keeps_odd_names_verbatim() -> None:
    # A name NodeSet would parse as an operator or a range is shown as it is.
    assert fold_hosts(["web1", "a,b", "x[1]"]) == "web1,a,b,x[1]"


def test_fold_round_trips_expand() -> None:
    names = expand_hosts("rack[1-3]-node[01-10]")
    assert sorted(expand_hosts(fold_hosts(names))) == sorted(names)


@pytest.mark.parametrize(
    "text",
    [
        "web[",
        "web]",
        "web[1-3",
        "web[a-b]",
        "web[3-1]",
        "web[]",
        "web[1-[2]]",
        "web[1-2/0]",
        "web[01-100]",  # padding mismatch, NodeSet's own check
        "web[1 - 3]",
    ],
)
def test_malformed_ranges_raise_pattern_error(text: str) -> None:
    with pytest.raises(PatternError, match="range"):
        expand_hosts(text)


@pytest.mark.parametrize(
    "text", ["web1,web2", "web[1-3]!web2", "@group", "web&db", "web*", "a b", "-oProxy", ""]
)
def test_nodeset_operators_and_bad_names_are_refused(text: str) -> None:
    with pytest.raises(PatternError):
        expand_hosts(text)


def test_huge_range_is_refused_without_expanding() -> None:
    start = time.perf_counter()
    with pytest.raises(PatternError, match=f"more than {MAX_RANGE_HOSTS}"):
        expand_hosts("node[1-100000000]")
    with pytest.raises(PatternError, match="more than"):
        expand_hosts("r[1-1000]-n[1-1000]")
    with pytest.raises(PatternError):
        expand_hosts("node[1-" + "9" * 5000 + "]")
    assert time.perf_counter() - start < 5.0  # a hang guard: expanding would take minutes


def test_count_range() -> None:
    assert count_range("r[1-2]-n[01-04,07]") == 10
    assert count_range("web[1-9/2]") == 5
    assert count_range("web01") == 1


def test_count_range_is_exact_past_the_range_limit_up_to_its_cap() -> None:
    assert count_range("a[1-1000]b[1-1000]c[1-1000]") == 10**9
    assert count_range("n[1-" + "9" * 60 + "]" + "[1-9]" * 10) > COUNT_CAP


def test_messages_about_a_long_range_are_short() -> None:
    with pytest.raises(PatternError) as err:
        expand_hosts("n[1-9]" + "x" * 1_000_000)
    assert len(str(err.value)) < 200 and "(1000006 characters)" in str(err.value)


def test_long_names_are_refused_without_a_long_message() -> None:
    problem = name_problem("a" * 1_000_000)
    assert problem is not None and "longer than 255" in problem and len(problem) < 120
    assert name_problem("a" * 255) is None


def test_largest_allowed_range_expands() -> None:
    assert len(expand_hosts(f"n[1-{MAX_RANGE_HOSTS}]")) == MAX_RANGE_HOSTS


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("", "empty"),
        ("-x", "starts with '-'"),
        ("a b", "whitespace"),
        ("a\tb", "whitespace"),
        ("a\x1bb", "control"),
        ("a:b", "reserve"),
        (5, "must be a string"),
    ],
)
def test_name_problem(name: object, fragment: str) -> None:
    problem = name_problem(name)
    assert problem is not None and fragment in problem


def test_good_names() -> None:
    for name in ("web01", "web01.example.com", "10.0.0.1", "db_1", "x-y"):
        assert name_problem(name) is None


def test_globs_around_brackets_are_kept_in_each_name_when_allowed() -> None:
    assert expand_hosts("host-[10-12]*", globs=True) == ["host-10*", "host-11*", "host-12*"]
    assert expand_hosts("*-n[1-2]?", globs=True) == ["*-n1?", "*-n2?"]
    assert expand_hosts("web*", globs=True) == ["web*"]
    assert count_range("a[1-2]*b[3-4]", globs=True) == 4


@pytest.mark.parametrize("text", ["host-[10-12]*", "web?[1-2]", "web*"])
def test_globs_are_refused_by_default(text: str) -> None:
    with pytest.raises(PatternError, match="reserve"):
        expand_hosts(text)


@pytest.mark.parametrize("text", ["web[1-2*]", "web[*]", "-*[1-2]", "a b*[1]", "web*[1-2]!x"])
def test_globs_inside_brackets_or_with_bad_names_stay_refused(text: str) -> None:
    with pytest.raises(PatternError):
        expand_hosts(text, globs=True)


def test_fold_globs() -> None:
    assert fold_hosts(["host-16*", "host-17*"], globs=True) == "host-[16-17]*"
    assert fold_hosts(["host-16*", "host-17*"]) == "host-16*,host-17*"  # verbatim by default
