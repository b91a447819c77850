"""PII detectors: a regular expression finds candidates, a check validates them.

Each built-in detector is a precompiled pattern plus a validation that cuts
false positives: Luhn and issuer digits for card numbers, the country's length
and mod-97 for IBANs, `ipaddress` for IP addresses, area/group/serial rules for
US social security numbers, libphonenumber (`PhoneNumberMatcher`, leniency
VALID) for phone numbers. No model, no download: the measured precision and
recall are in tests/policies/test_pii_detectors.py (a labelled set written for
it).

The request path pays for a detector only when the text could hold its kind:
a substring test (`@` for emails, `:` for IPv6) or one regex pass over the
text (digit runs) comes before anything slower, and libphonenumber only ever
sees the short candidates the digit pattern found, never the whole text.

`Scanner.scan` returns non-overlapping spans: where two detectors claim
overlapping text (a card number is also a long digit run a phone parser may
like), the longer span wins, then the detector listed first in `BUILTIN`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import phonenumbers

BuiltinKind = Literal["email", "iban", "credit_card", "ssn", "ip_address", "phone"]
# Overlap priority (on equal length) follows this order; custom detectors come after.
BUILTIN: tuple[BuiltinKind, ...] = ("email", "iban", "credit_card", "ssn", "ip_address", "phone")


@dataclass(frozen=True, slots=True)
class Span:
    start: int
    end: int
    kind: str  # the detector's name


# -- email ---------------------------------------------------------------------------

# ASCII addresses: a local part, @, dot-separated labels and a letter TLD. The
# lookarounds stop a match from starting or ending inside a longer token.
_EMAIL = re.compile(
    r"(?<![\w.%+\-])"
    r"[A-Za-z0-9_%+\-](?:[A-Za-z0-9._%+\-]{0,62}[A-Za-z0-9_%+\-])?"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}"
    r"(?![\w\-]|\.[A-Za-z0-9])"
)


# "logo@2x.png": asset names (retina variants) look like addresses at a file type.
_FILE_TYPES = frozenset(
    {
        *("png", "jpg", "jpeg", "gif", "svg", "webp", "avif", "bmp", "ico", "pdf", "txt"),
        *("csv", "json", "yaml", "yml", "xml", "html", "htm", "css", "js", "ts", "md", "py"),
    }
)


def find_emails(text: str) -> list[tuple[int, int]]:
    found: list[tuple[int, int]] = []
    at = text.find("@")
    while at >= 0:
        # Only around each "@": a local part is at most 64 characters, a domain 255.
        for m in _EMAIL.finditer(text, max(0, at - 64), min(len(text), at + 256)):
            if m.start() <= at < m.end():
                if m.group().rpartition(".")[2].lower() not in _FILE_TYPES:
                    found.append(m.span())
                at = m.end()
                break
        at = text.find("@", at + 1)
    return found


# -- digit clusters ------------------------------------------------------------------

# Card numbers, SSNs, IPv4 addresses and phone numbers all are a run of at
# least 7 digits and separators: one pass finds those runs, and the kinds'
# own patterns only ever run on them. (A pattern that starts with a
# lookbehind makes sre try every position of the text; this one lets it skip
# to the next digit.)
_CLUSTER = re.compile(r"[0-9][0-9 \-.()/]{5,}[0-9]")
_MARGIN = 3  # characters either side of a cluster: "+", "(", ")" and the lookarounds'


# -- credit cards ----------------------------------------------------------------------

# 13 to 19 digits, together or in the printed groups (4-4-4-4[-3], 4-6-5, 4-6-4)
# with one separator used throughout.
_CARD = re.compile(
    r"(?<![\w\-])(?:"
    r"\d{13,19}"
    r"|\d{4}([ \-])\d{4}\1\d{4}\1\d{1,4}(?:\1\d{1,3})?"
    r"|\d{4}([ \-])\d{6}\2\d{4,5}"
    r")(?![\w])"
)
_GROUP_TAIL = re.compile(r"[ \-]\d{1,3}$")
# A country code and check digits right before: the digits are the rest of an
# IBAN-shaped number (one that failed mod 97 is a mistyped IBAN, not a card).
_IBAN_HEAD = re.compile(r"[A-Z]{2}\d{2}[ \-]?$")


def luhn(digits: str) -> bool:
    total = 0
    for i, char in enumerate(reversed(digits)):
        d = ord(char) - 48
        if i & 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card_number(candidate: str) -> bool:
    digits = candidate.replace(" ", "").replace("-", "")
    # Issuers' numbers start with 2 to 6 (Mastercard 2-series, Amex/JCB/Diners 3,
    # Visa 4, Mastercard/Maestro 5, Discover/UnionPay 6): other long digit runs
    # passing Luhn by chance (one in ten) are mostly not cards.
    return 13 <= len(digits) <= 19 and digits[0] in "23456" and luhn(digits)


def find_cards(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    found = []
    for m in _CARD.finditer(text, start, len(text) if end is None else end):
        begin = m.start()
        candidate = m.group()
        if _IBAN_HEAD.search(text, max(0, begin - 5), begin) is not None:
            continue
        if _card_number(candidate):
            found.append(m.span())
            continue
        # A short number right after a grouped card ("... 1111 2 items") was
        # taken as its last group: try the card without it.
        tail = _GROUP_TAIL.search(candidate)
        if tail is not None and _card_number(candidate[: tail.start()]):
            found.append((begin, begin + tail.start()))
    return found


# -- IBAN ------------------------------------------------------------------------------

# The registry's lengths per country (ISO 13616; SWIFT's IBAN registry).
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24,
    "DE": 22, "DJ": 27, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18,
    "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27,
    "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27,
    "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27,
    "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24, "PL": 28,
    "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
    "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip

# The country code and check digits in upper case start every candidate (a
# pass that skips quickly over prose, which has few capitals); the rest may be
# grouped by four with spaces.
_IBAN_START = re.compile(r"[A-Z]{2}[0-9]{2}")
_IBAN = re.compile(
    r"(?<![\w])[A-Z]{2}\d{2}(?: ?[A-Za-z0-9]{4}){2,7}(?: ?[A-Za-z0-9]{1,4})?(?![\w])"
)


def iban_valid(compact: str) -> bool:
    """`compact`: upper case, no spaces; its country's length and mod 97 == 1."""
    if IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    moved = compact[4:] + compact[:4]
    # Letters count as two digits (A=10 ... Z=35), as int(c, 36) gives them.
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def find_ibans(text: str) -> list[tuple[int, int]]:
    found: list[tuple[int, int]] = []
    pos = 0
    while (hit := _IBAN_START.search(text, pos)) is not None:
        pos = hit.end()
        length = IBAN_LENGTHS.get(hit.group()[:2])
        m = _IBAN.match(text, hit.start()) if length is not None else None
        if m is None or length is None:
            continue
        candidate = m.group()
        # The pattern may run into a following group ("... 00 1234"): cut at the
        # country's length, where a group ends.
        count = 0
        cut = len(candidate)
        for i, char in enumerate(candidate):
            if char != " ":
                count += 1
                if count == length:
                    cut = i + 1
                    break
        if count < length or (cut < len(candidate) and candidate[cut] != " "):
            continue
        if iban_valid(candidate[:cut].replace(" ", "").upper()):
            found.append((m.start(), m.start() + cut))
            pos = m.start() + cut
    return found


# -- US social security numbers ----------------------------------------------------------

# Written AAA-GG-SSSS (or with spaces); nine digits without separators are too
# often something else to be called an SSN without context.
_SSN = re.compile(r"(?<![\w\-])(\d{3})([\- ])(\d{2})\2(\d{4})(?![\w]|-\d)")
# Published as examples (an advertisement's, the Social Security Administration's).
_SSN_EXAMPLES = frozenset({"078051120", "219099999"})


def find_ssns(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    found = []
    for m in _SSN.finditer(text, start, len(text) if end is None else end):
        area, _, group, serial = m.groups()
        if (
            area == "000"
            or area == "666"
            or area[0] == "9"  # 900-999: never issued (ITINs)
            or group == "00"
            or serial == "0000"
            or area + group + serial in _SSN_EXAMPLES
        ):
            continue
        found.append(m.span())
    return found


# -- IP addresses ----------------------------------------------------------------------

_IPV4 = re.compile(r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?![\w]|\.\d)")
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|\d{1,3}(?:\.\d{1,3}){3})?"
    r"(?![\w:]|\.\d)"
)
# What an IPv6 address has and prose rarely does: checked before the pattern runs.
_HEX_COLON = re.compile(r":[0-9A-Fa-f]{1,4}:")
# Four dotted numbers after these words are a version or a section, not an address.
_VERSION_WORDS = re.compile(
    r"(?:\b(?:version|ver\.?|build|release|v|section|chapter|clause|step)|§)\s*$", re.IGNORECASE
)


def find_ipv4(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    found = []
    for m in _IPV4.finditer(text, start, len(text) if end is None else end):
        try:
            ipaddress.IPv4Address(m.group())
        except ValueError:
            continue
        if _VERSION_WORDS.search(text, max(0, m.start() - 12), m.start()):
            continue
        found.append(m.span())
    return found


def find_ipv6(text: str) -> list[tuple[int, int]]:
    found: list[tuple[int, int]] = []
    if "::" not in text and _HEX_COLON.search(text) is None:
        return found
    for m in _IPV6.finditer(text):
        candidate = m.group()
        if candidate.strip(":") == "":  # "::" alone says nothing
            continue
        try:
            ipaddress.IPv6Address(candidate)
        except ValueError:
            continue
        found.append(m.span())
    return found


# -- phone numbers ----------------------------------------------------------------------


class PhoneFinder:
    """Phone numbers valid for libphonenumber (`PhoneNumberMatcher`, leniency
    VALID); numbers without a country code are read as numbers of `region`
    (ISO 3166 alpha-2, e.g. "US")."""

    def __init__(self, region: str) -> None:
        self.region = region

    def __call__(self, text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
        # The window keeps a character either side: the matcher refuses a number
        # glued to a letter, or followed by a time (":30") as in a timestamp.
        low = max(0, start - 1)
        high = len(text) if end is None else min(len(text), end + 1)
        return [
            (low + match.start, low + match.end)
            for match in phonenumbers.PhoneNumberMatcher(
                text[low:high], self.region, leniency=phonenumbers.Leniency.VALID
            )
        ]


# -- custom patterns ---------------------------------------------------------------------


def regex_finder(pattern: re.Pattern[str]) -> Callable[[str], list[tuple[int, int]]]:
    def find(text: str) -> list[tuple[int, int]]:
        return [m.span() for m in pattern.finditer(text) if m.end() > m.start()]

    return find


# -- the scanner ---------------------------------------------------------------------------


class Scanner:
    """The detectors of one policy, run over a text: non-overlapping spans in order."""

    def __init__(
        self,
        detectors: Sequence[str],
        custom: Sequence[tuple[str, re.Pattern[str]]] = (),
        phone_region: str = "US",
    ) -> None:
        unknown = sorted(set(detectors) - set(BUILTIN))
        if unknown:
            raise ValueError(f"unknown detector(s): {', '.join(unknown)}")
        on = frozenset(detectors)
        self.email = "email" in on
        self.iban = "iban" in on
        self.card = "credit_card" in on
        self.ssn = "ssn" in on
        self.ip = "ip_address" in on
        self.phone = PhoneFinder(phone_region) if "phone" in on else None
        self._clusters = self.card or self.ssn or self.ip or self.phone is not None
        self._custom = [(name, regex_finder(pattern)) for name, pattern in custom]
        self.kinds: tuple[str, ...] = (
            *(name for name in BUILTIN if name in on),
            *(name for name, _ in custom),
        )

    def scan(self, text: str) -> list[Span]:
        found: list[tuple[int, int, int, str]] = []  # (start, end, priority, kind)
        if self.email and "@" in text:
            found += [(s, e, 0, "email") for s, e in find_emails(text)]
        if self.iban:
            found += [(s, e, 1, "iban") for s, e in find_ibans(text)]
        if self._clusters:
            claimed = [(s, e) for s, e, _, _ in found]  # IBANs and emails hold digit runs too
            for cluster in _CLUSTER.finditer(text):
                start, end = cluster.span()
                if not any(s <= start and end <= e for s, e in claimed):
                    self._scan_cluster(text, start, end, found)
        if self.ip and ":" in text:
            found += [(s, e, 4, "ip_address") for s, e in find_ipv6(text)]
        for priority, (kind, find) in enumerate(self._custom, start=len(BUILTIN)):
            found += [(s, e, priority, kind) for s, e in find(text)]
        if not found:
            return []
        if len(found) == 1:
            start, end, _, kind = found[0]
            return [Span(start, end, kind)]
        return _resolve(found)

    def _scan_cluster(
        self, text: str, start: int, end: int, found: list[tuple[int, int, int, str]]
    ) -> None:
        digits = sum(c.isdigit() for c in text[start:end])
        low, high = max(0, start - _MARGIN), min(len(text), end + _MARGIN)
        covered = 0  # the longest span found so far: a phone inside it would lose anyway
        if self.card and digits >= 13:
            for s, e in find_cards(text, low, high):
                found.append((s, e, 2, "credit_card"))
                covered = max(covered, e - s)
        if self.ssn and digits >= 9:
            for s, e in find_ssns(text, low, high):
                found.append((s, e, 3, "ssn"))
                covered = max(covered, e - s)
        if self.ip and "." in text[start:end]:
            for s, e in find_ipv4(text, low, high):
                found.append((s, e, 4, "ip_address"))
                covered = max(covered, e - s)
        if self.phone is not None and digits >= 7 and covered < end - start:
            found += [(s, e, 5, "phone") for s, e in self.phone(text, low, high)]


def _resolve(found: list[tuple[int, int, int, str]]) -> list[Span]:
    """The longest spans first (then by priority), dropping any that overlaps one kept."""
    found.sort(key=lambda f: (f[0] - f[1], f[2], f[0]))
    kept: list[tuple[int, int, int, str]] = []
    for candidate in found:
        start, end = candidate[0], candidate[1]
        if all(end <= k[0] or start >= k[1] for k in kept):
            kept.append(candidate)
    kept.sort()
    return [Span(start, end, kind) for start, end, _, kind in kept]
