"""`pinproxy check PINSET`: validate a pinset, then lint it; text for people, JSON for CI.

Load errors keep their `path:line: message` form (stderr in text mode); lint findings come from
`pinproxy.tools.lint` (and `pinproxy.tools.live` with `--live`); this module only chooses and
formats.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from collections.abc import Sequence

from pinproxy.commands._probe_options import add_probe_options
from pinproxy.errors import PinproxyError, PinsetError, Problem, quote
from pinproxy.loader import format_duration, load_pinset, parse_day
from pinproxy.pinset import Pinset
from pinproxy.tools.lint import CODES, EXPIRY_WARNING_DAYS, Finding, Severity, lint
from pinproxy.tools.live import LIVE_CODES, live_findings

EXIT_OK = 0
EXIT_WARNINGS = 1  # only with --strict
EXIT_ERRORS = 2


def _codes(codes: dict[str, str]) -> str:
    return "\n".join(f"  {code:22} {meaning}" for code, meaning in codes.items())


_EPILOG = f"""\
exit status:
  {EXIT_OK}  no errors (warnings allowed, unless --strict)
  {EXIT_WARNINGS}  warnings, with --strict
  {EXIT_ERRORS}  load errors, errors found (--live), or bad arguments

lint codes (warnings):
{_codes(CODES)}
  load-error             the pinset does not load (an error; a finding in --format json only)
live codes (--live; each finding says whether it is an error or a warning):
{_codes(LIVE_CODES)}
"""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "check", help="validate and lint a pinset file", epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Load a pinset and report every problem, then lint it for rules that\n"
                    "will break at the next rotation or do not mean what they seem to.")
    parser.add_argument("pinset", metavar="PINSET")
    parser.add_argument("--strict", action="store_true",
                        help=f"exit {EXIT_WARNINGS} when there are warnings")
    parser.add_argument("--format", choices=("text", "json"), default="text",
                        help="json: one JSON document on stdout, for CI (default: %(default)s)")
    parser.add_argument("--today", type=_day, metavar="YYYY-MM-DD",
                        help="judge expiry as of this day (default: today, UTC)")
    parser.add_argument("--expiry-warning", type=_days, metavar="DAYS",
                        default=EXPIRY_WARNING_DAYS,
                        help="warn of rules whose last enforced day is at most DAYS days away "
                             "(default: %(default)s)")
    parser.add_argument("--live", action="store_true",
                        help="also connect to every exact host and compare its chain with the "
                             "pins (the options below apply only with --live)")
    add_probe_options(parser)
    parser.set_defaults(command=check)


def check(args: argparse.Namespace) -> int:
    if not args.live and (args.upstream_ca or args.connect_to):
        raise PinproxyError("--upstream-ca and --connect-to only apply with --live")
    path: str = args.pinset
    try:
        pinset = load_pinset(path)
    except PinsetError as e:
        if args.format == "text":
            raise
        findings = [_load_error(problem) for problem in e.problems]
        return _emit_json(path, findings, _exit_code(findings, args.strict))
    today: dt.date = args.today or dt.datetime.now(dt.UTC).date()
    findings = lint(pinset, today, None if args.today else dt.datetime.now(dt.UTC),
                    args.expiry_warning)
    if args.live:
        findings += live_findings(pinset, upstream_ca=args.upstream_ca,
                                  connect_to=args.connect_to, timeout=args.timeout, today=today)
    code = _exit_code(findings, args.strict)
    if args.format == "json":
        return _emit_json(path, findings, code, pinset)
    for finding in findings:
        print(finding)
    print(_summary(path, pinset, findings, code))
    return code


def _day(text: str) -> dt.date:
    try:
        return parse_day(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{quote(text)} is not a date written YYYY-MM-DD") from None


def _days(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > 36500:
        raise argparse.ArgumentTypeError(f"{quote(text)} is not a number of days from 0 to 36500")
    return int(text)


def _exit_code(findings: Sequence[Finding], strict: bool) -> int:
    severities = {finding.severity for finding in findings}
    if Severity.ERROR in severities:
        return EXIT_ERRORS
    return EXIT_WARNINGS if strict and Severity.WARNING in severities else EXIT_OK


def _summary(path: str, pinset: Pinset, findings: Sequence[Finding], code: int) -> str:
    counts = _counts(findings)
    if code == EXIT_OK:
        shape = (f"{len(pinset.rules)} host rules, {pinset.pin_count} pins, mode {pinset.mode}, "
                 f"unpinned {pinset.unpinned}, on_expiry {pinset.on_expiry}"
                 f"{_signed_keys(pinset)}{_reporting(pinset)}")
        tail = f"; {_plural(counts[Severity.WARNING], 'warning')}" if findings else ""
        return f"{path}: OK: {shape}{tail}"
    because = " (--strict)" if code == EXIT_WARNINGS else ""
    return (f"{path}: FAILED{because}: {_plural(counts[Severity.ERROR], 'error')}, "
            f"{_plural(counts[Severity.WARNING], 'warning')}")


def _signed_keys(pinset: Pinset) -> str:
    """The keys of a signed pinset, when it has them."""
    serial = f", serial {pinset.serial}" if pinset.serial is not None else ""
    until = (f", valid until {pinset.valid_until.isoformat()}"
             if pinset.valid_until is not None else "")
    return serial + until


def _signed_fields(pinset: Pinset | None) -> dict[str, object]:
    """`serial` and `valid_until` for the JSON document, when the pinset has them."""
    fields: dict[str, object] = {}
    if pinset is not None and pinset.serial is not None:
        fields["serial"] = pinset.serial
    if pinset is not None and pinset.valid_until is not None:
        fields["valid_until"] = pinset.valid_until.isoformat()
    return fields
def _reporting(pinset: Pinset) -> str:
    """Where violation reports are POSTed, when the pinset says: the top-level report_uri,
    how many rules name their own, and the dedupe window."""
    own = sum(1 for rule in pinset.rules if rule.report_uri)
    if pinset.report_uri is None and not own:
        return ""
    parts = [f"reports to {pinset.report_uri}"] if pinset.report_uri else []
    if own:
        parts.append(f"{_plural(own, 'rule')} with its own report_uri")
    parts.append(f"report dedupe {format_duration(pinset.report_dedupe)}")
    return ", " + ", ".join(parts)


def _counts(findings: Sequence[Finding]) -> dict[Severity, int]:
    counts = dict.fromkeys(Severity, 0)
    for finding in findings:
        counts[finding.severity] += 1
    return counts


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _load_error(problem: Problem) -> Finding:
    """A loader problem as a `load-error` finding, at the problem's location."""
    return Finding(Severity.ERROR, "load-error", problem.message, problem.location)


def _emit_json(path: str, findings: Sequence[Finding], code: int,
               pinset: Pinset | None = None) -> int:
    counts = _counts(findings)
    document = {
        "pinset": path,
        "ok": code == EXIT_OK,
        **({"on_expiry": pinset.on_expiry.value} if pinset is not None else {}),
        **_signed_fields(pinset),
        "errors": counts[Severity.ERROR],
        "warnings": counts[Severity.WARNING],
        "findings": [{
            "severity": finding.severity.value,
            "code": finding.code,
            "message": finding.message,
            "path": finding.location.path if finding.location else path,
            "line": finding.location.line if finding.location else None,
            "host": finding.host,
        } for finding in findings],
    }
    print(json.dumps(document, indent=2))
    return code
