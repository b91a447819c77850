"""The PII detectors, measured: recall and precision per type over a labelled
set written for these tests (tests/policies/pii_labelled.jsonl: sentences with
and without personal data, tricky negatives such as order numbers, dates,
versions, card numbers failing Luhn and IBANs failing mod 97), and the
validations each detector relies on."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gateway.policies.pii_detectors import (
    BUILTIN,
    IBAN_LENGTHS,
    Scanner,
    Span,
    iban_valid,
    luhn,
)

LABELLED = Path(__file__).with_name("pii_labelled.jsonl")
TARGET = 0.95


def _expected(entry: dict[str, object]) -> set[tuple[int, int, str]]:
    """The labelled spans: each value at its next occurrence in the text."""
    text = str(entry["text"])
    spans: set[tuple[int, int, str]] = set()
    for label in entry["pii"]:  # type: ignore[attr-defined]
        value, kind = label["value"], label["type"]
        at = text.find(value)
        while (at, at + len(value), kind) in spans:
            at = text.find(value, at + 1)
        assert at >= 0, f"label {value!r} is not in {text!r}"
        spans.add((at, at + len(value), kind))
    return spans


def _measure() -> dict[str, tuple[int, int, int]]:
    """(true positives, false positives, false negatives) per type."""
    scanner = Scanner(BUILTIN)
    counts = {kind: [0, 0, 0] for kind in BUILTIN}
    for line in LABELLED.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        expected = _expected(entry)
        found = {(s.start, s.end, s.kind) for s in scanner.scan(entry["text"])}
        for _, _, kind in found & expected:
            counts[kind][0] += 1
        for _, _, kind in found - expected:
            counts[kind][1] += 1
        for _, _, kind in expected - found:
            counts[kind][2] += 1
    return {kind: (tp, fp, fn) for kind, (tp, fp, fn) in counts.items()}


def test_the_labelled_set_is_large_and_covers_every_type() -> None:
    lines = LABELLED.read_text(encoding="utf-8").splitlines()
    assert len(lines) >= 200
    entries = [json.loads(line) for line in lines]
    kinds = {label["type"] for e in entries for label in e["pii"]}
    assert kinds == set(BUILTIN)
    assert sum(1 for e in entries if not e["pii"]) >= 50  # sentences without any


def test_recall_and_precision_per_type(capsys: pytest.CaptureFixture[str]) -> None:
    measured = _measure()
    rows = []
    failing = []
    for kind, (tp, fp, fn) in measured.items():
        precision = tp / (tp + fp) if tp + fp else 1.0
        recall = tp / (tp + fn) if tp + fn else 1.0
        rows.append(
            f"{kind:12} precision {precision:.3f} recall {recall:.3f} (tp {tp} fp {fp} fn {fn})"
        )
        if precision < TARGET or recall < TARGET:
            failing.append(kind)
    with capsys.disabled():
        print("\nPII detectors on tests/policies/pii_labelled.jsonl:\n" + "\n".join(rows))
    assert not failing, "\n".join(rows)


def test_luhn() -> None:
    assert luhn("4111111111111111")
    assert luhn("378282246310005")
    assert not luhn("4111111111111112")
    assert not luhn("378282246310006")


def test_iban_mod97_and_length() -> None:
    assert iban_valid("DE89370400440532013000")
    assert iban_valid("GB82WEST12345698765432")
    assert not iban_valid("DE89370400440532013001")  # one digit off
    assert not iban_valid("DE8937040044053201300")  # a digit short for DE
    assert not iban_valid("ZZ89370400440532013000")  # no such country
    assert IBAN_LENGTHS["NO"] == 15 and IBAN_LENGTHS["LC"] == 32


def _found(scanner: Scanner, text: str) -> list[tuple[str, str]]:
    return [(text[s.start : s.end], s.kind) for s in scanner.scan(text)]


def test_phone_numbers_without_a_country_code_use_the_region() -> None:
    text = "ring 020 7946 0321 or (415) 555-0132"
    assert _found(Scanner(["phone"], phone_region="GB"), text) == [("020 7946 0321", "phone")]
    assert _found(Scanner(["phone"], phone_region="US"), text) == [("(415) 555-0132", "phone")]


def test_a_longer_match_wins_an_overlap() -> None:
    # A card number is also a digit run a phone parser might read; an IPv6 address
    # embeds an IPv4 one.
    scanner = Scanner(BUILTIN)
    assert _found(scanner, "pay 4111 1111 1111 1111 now") == [
        ("4111 1111 1111 1111", "credit_card")
    ]
    assert _found(scanner, "from ::ffff:192.0.2.128 today") == [
        ("::ffff:192.0.2.128", "ip_address")
    ]


def test_only_the_chosen_detectors_run_and_custom_ones_are_named() -> None:
    scanner = Scanner(["email"], [("employee_id", re.compile(r"\bE\d{6}\b"))])
    text = "E123456 (bob@example.com) called 415-555-0132"
    assert scanner.scan(text) == [Span(0, 7, "employee_id"), Span(9, 24, "email")]
    assert scanner.kinds == ("email", "employee_id")


def test_an_unknown_detector_is_refused() -> None:
    with pytest.raises(ValueError, match=r"unknown detector.*passport"):
        Scanner(["email", "passport"])


def test_text_without_digits_or_at_signs_finds_nothing_quickly() -> None:
    scanner = Scanner(BUILTIN)
    assert scanner.scan("plain prose, no numbers at all: only words and punctuation.") == []
