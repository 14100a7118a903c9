"""`pinproxy check`: load errors, lint findings, exit codes, `--format json`, `--today`, `--live`.

The real CLI as a subprocess for what a user or a CI job sees; `cli.main` in-process for the
argument tables, to keep the suite fast.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import trustme

from pinproxy.cli import main
from tests import certs
from tests.conftest import Serve
from tests.proxy import REPO, run_pinproxy

ROOT, INTER, LEAF = (str(cert.spki) for cert in certs.pki("check").chain)
OTHER_ROOT = str(certs.pki("check-other").chain[-1].spki)
ISRG_X1 = "sha256/C5+lpZ7tcVwmwQIMcRtPbsQtWLABXhQzejna0wHFr8M="  # a real key, not in any test chain

CLEAN = f"""\
version: 1
hosts:
  - host: api.example.com
    pins: ["{ROOT}", "{OTHER_ROOT}"]
  - host: "*.cdn.example.com"
    expires: 2027-12-31
    pins: ["{INTER}", "{OTHER_ROOT}"]
"""

# line 3: one pin; line 5: expires 2027-12-31
WARNINGS = f"""\
version: 1
hosts:
  - host: api.example.com
    pins: ["{ROOT}"]
  - host: www.example.com
    expires: 2027-12-31
    pins: ["{ROOT}", "{OTHER_ROOT}"]
"""

BROKEN = f"""\
version: 1
hosts:
  - host: api.example.com
    pins: ["sha256/a"]
  - host: www.example.com
    pins: ["{ROOT}"]
    include_subdomain: true
"""


def write(tmp_path: Path, text: str, name: str = "pins.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def run_json(*args: str) -> tuple[int, dict[str, object]]:
    """`pinproxy check --format json` as a CI job runs it: a process, stdout parsed."""
    done = run_pinproxy("check", "--format", "json", *args)
    assert "Traceback" not in done.stderr
    assert done.stderr == ""
    return done.returncode, json.loads(done.stdout)


def main_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, object]]:
    """The same, in-process."""
    code = main(["check", "--format", "json", *args])
    out, err = capsys.readouterr()
    assert err == ""
    return code, json.loads(out)


# -- text ----------------------------------------------------------------------------------

def test_shipped_pinset_loads_and_says_what_it_holds() -> None:
    done = run_pinproxy("check", "config/pins.yaml", "--today", "2027-01-01", cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].startswith(
        "config/pins.yaml: OK: 3 host rules, 6 pins, mode enforce, unpinned allow")
    assert done.stderr == ""


def test_a_clean_pinset_prints_only_the_summary_even_when_strict(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, CLEAN)
    summary = (f"{path}: OK: 2 host rules, 4 pins, mode enforce, unpinned allow, "
               "on_expiry report\n")
    done = run_pinproxy("check", str(path), "--today", "2027-01-01")
    assert (done.returncode, done.stdout, done.stderr) == (0, summary, "")
    assert main(["check", str(path), "--today", "2027-01-01", "--strict"]) == 0
    assert capsys.readouterr().out == summary


def test_warnings_pass_unless_strict(tmp_path: Path) -> None:
    path = write(tmp_path, WARNINGS)
    done = run_pinproxy("check", str(path), "--today", "2027-12-20")
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"{path}:3: warning: api.example.com: only one pin can match")
    assert lines[0].endswith("[missing-backup-pin]")
    assert lines[1].startswith(f"{path}:5: warning: www.example.com: last enforced day is "
                               "2027-12-31 (in 11 days)")
    assert lines[1].endswith("[expires-soon]")
    assert lines[2] == (f"{path}: OK: 2 host rules, 3 pins, mode enforce, unpinned allow, "
                        "on_expiry report; 2 warnings")
    strict = run_pinproxy("check", str(path), "--today", "2027-12-20", "--strict")
    assert strict.returncode == 1
    assert strict.stdout.splitlines()[:2] == lines[:2]
    assert strict.stdout.splitlines()[2] == f"{path}: FAILED (--strict): 0 errors, 2 warnings"


@pytest.mark.parametrize(("text", "warns"), [
    ("version: 1\nhosts: []\n", True),
    ("version: 1\nmode: report\nhosts:\n  - host: api.example.com\n"
     f'    pins: ["{ROOT}", "{OTHER_ROOT}"]\n', True),
    ("version: 1\nunpinned: block\nhosts: []\n", False),  # every connection is refused
    ("version: 1\nhosts:\n  - host: api.example.com\n"
     f'    pins: ["{ROOT}", "{OTHER_ROOT}"]\n', False),
])
def test_a_pinset_that_refuses_nothing_warns_and_fails_strict(
        text: str, warns: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, text)
    assert main(["check", str(path), "--today", "2027-01-01"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert (out[0].startswith(f"{path}: warning: {path}: ") and
            out[0].endswith("no connection is ever refused, the proxy enforces no pin; add "
                            "enforced rules or 'unpinned: block' [protects-nothing]")) is warns
    assert main(["check", str(path), "--today", "2027-01-01", "--strict"]) == (1 if warns else 0)


@pytest.mark.parametrize(("host", "warns"), [
    ("p\u0430ypal.com", True), ("xn--pypal-4ve.com", True),  # Cyrillic U+0430 among Latin
    ("\u043f\u0440\u0438\u043c\u0435\u0440.\u0440\u0444", False), ("paypal.com", False),
])
def test_a_mixed_script_label_warns(host: str, warns: bool, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, f'version: 1\nhosts:\n  - host: "{host}"\n'
                           f'    pins: ["{ROOT}", "{OTHER_ROOT}"]\n')
    code = main(["check", str(path), "--today", "2027-01-01", "--strict"])
    out = capsys.readouterr().out
    assert code == (1 if warns else 0)
    assert ("label 'p\u0430ypal' (xn--pypal-4ve) mixes Latin and Cyrillic letters" in out) is warns


def test_load_errors_stay_path_line_message_on_stderr(tmp_path: Path) -> None:
    path = write(tmp_path, BROKEN)
    done = run_pinproxy("check", str(path), "--strict")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"{path}:4: pin 'sha256/a' is not base64 of a 32-byte SHA-256 digest",
        f"{path}:7: unknown key 'include_subdomain' in a host rule; expected expires, host, "
        "include_subdomains, mode, on_expiry, pins, report_uri",
    ]


def test_today_decides_expiry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, CLEAN)
    assert main(["check", str(path), "--today", "2027-12-01", "--strict"]) == 1
    assert "[expires-soon]" in capsys.readouterr().out
    assert main(["check", str(path), "--today", "2027-11-30", "--strict"]) == 0
    assert main(["check", str(path), "--today", "2028-01-01", "--strict"]) == 1
    assert "expired after 2027-12-31" in capsys.readouterr().out


@pytest.mark.parametrize("day", ["2027-02-30", "20271231", "2027-W52-5", "tomorrow", ""])
def test_a_bad_today_is_a_usage_error(day: str, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, CLEAN)
    with pytest.raises(SystemExit) as exit_:
        main(["check", str(path), "--today", day])
    assert exit_.value.code == 2
    assert f"{day!r} is not a date written YYYY-MM-DD" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["--connect-to", "a:443:127.0.0.1:1"],
                                  ["--upstream-ca", "ca.pem"]])
def test_live_options_need_live(args: list[str], tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(write(tmp_path, CLEAN)), *args]) == 2
    assert capsys.readouterr() == (
        "", "pinproxy: --upstream-ca and --connect-to only apply with --live\n")


# -- json ----------------------------------------------------------------------------------

def test_json_lists_findings_for_ci(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, WARNINGS)
    code, document = run_json(str(path), "--today", "2027-12-20")
    assert code == 0
    assert document == {
        "pinset": str(path), "ok": True, "on_expiry": "report", "errors": 0, "warnings": 2,
        "findings": [
            {"severity": "warning", "code": "missing-backup-pin",
             "message": document["findings"][0]["message"],  # type: ignore[index]
             "path": str(path), "line": 3, "host": "api.example.com"},
            {"severity": "warning", "code": "expires-soon",
             "message": "www.example.com: last enforced day is 2027-12-31 (in 11 days); after "
                        "it the pins are no longer checked and every connection it covers is "
                        "reported as rule-expired (on_expiry: report); extend 'expires' if the "
                        "pins are still right",
             "path": str(path), "line": 5, "host": "www.example.com"},
        ],
    }
    strict_code, strict = main_json(capsys, str(path), "--today", "2027-12-20", "--strict")
    assert (strict_code, strict["ok"], strict["findings"]) == (1, False, document["findings"])


def test_json_of_a_clean_pinset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, CLEAN)
    code, document = main_json(capsys, str(path), "--today", "2027-01-01", "--strict")
    assert (code, document) == (0, {"pinset": str(path), "ok": True, "on_expiry": "report",
                                    "errors": 0, "warnings": 0, "findings": []})


def test_json_turns_load_errors_into_findings(tmp_path: Path) -> None:
    path = write(tmp_path, BROKEN)
    code, document = run_json(str(path))
    assert code == 2
    assert document == {
        "pinset": str(path), "ok": False, "errors": 2, "warnings": 0,
        "findings": [
            {"severity": "error", "code": "load-error",
             "message": "pin 'sha256/a' is not base64 of a 32-byte SHA-256 digest",
             "path": str(path), "line": 4, "host": None},
            {"severity": "error", "code": "load-error",
             "message": "unknown key 'include_subdomain' in a host rule; expected expires, "
                        "host, include_subdomains, mode, on_expiry, pins, report_uri",
             "path": str(path), "line": 7, "host": None},
        ],
    }


def test_json_of_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "missing.yaml"
    code, document = main_json(capsys, str(path))
    assert code == 2
    findings = document["findings"]
    assert isinstance(findings, list)
    [finding] = findings
    assert finding == {"severity": "error", "code": "load-error",
                       "message": "cannot read pinset: No such file or directory",
                       "path": str(path), "line": None, "host": None}


# -- --live --------------------------------------------------------------------------------

def test_check_live_reports_a_pin_the_live_chain_does_not_have(
        tmp_path: Path, pki: certs.TrustedPki, serve: Serve, good_leaf: trustme.LeafCert) -> None:
    """Two exact rules served by one loopback server: one pinned to the chain's root, one to
    keys the chain does not have. Only the second is an error."""
    server = serve(good_leaf)
    path = write(tmp_path, textwrap.dedent(f"""\
        version: 1
        hosts:
          - host: root.pinned.test
            pins: ["{pki.root_pin}", "{ISRG_X1}"]
          - host: leaf.pinned.test
            pins: ["{pki.rogue_root_pin}", "{ISRG_X1}"]
    """))
    code, document = run_json(
        str(path), "--live", "--upstream-ca", str(pki.ca_bundle), "--timeout", "5",
        "--connect-to", f"root.pinned.test:443:127.0.0.1:{server.port}",
        "--connect-to", f"leaf.pinned.test:443:127.0.0.1:{server.port}")
    assert server.connections_accepted >= 2  # both hosts were really asked
    findings: list[dict[str, object]] = document["findings"]  # type: ignore[assignment]
    errors = [(f["host"], f["line"]) for f in findings if f["severity"] == "error"]
    assert errors == [("leaf.pinned.test", 5)]
    assert not [f for f in findings if f["host"] == "root.pinned.test"]
    assert (code, document["ok"], document["errors"]) == (2, False, 1)


def test_a_reader_that_leaves_early_gets_no_traceback() -> None:
    """`pinproxy schema | head -1`: the closed pipe ends the command quietly."""
    import subprocess
    import sys

    done = subprocess.run(f"{sys.executable} -m pinproxy schema | head -c 1", shell=True,
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.stdout == "{"
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr


# -- a signed pinset's keys ----------------------------------------------------------------

SIGNED = CLEAN.replace("version: 1\n",
                       "version: 1\nserial: 12\nvalid_until: 2027-01-10T00:00:00Z\n")


def test_check_shows_serial_and_valid_until(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, SIGNED)
    assert main(["check", str(path), "--today", "2027-01-01", "--strict"]) == 0
    assert "serial 12, valid until 2027-01-10T00:00:00+00:00" in capsys.readouterr().out
    code, document = main_json(capsys, str(path), "--today", "2027-01-01")
    assert (code, document["serial"], document["valid_until"]) == (
        0, 12, "2027-01-10T00:00:00+00:00")


def test_check_warns_when_valid_until_is_near_or_past(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, SIGNED)
    assert main(["check", str(path), "--today", "2027-01-08", "--strict"]) == 1
    assert "[stale-soon]" in capsys.readouterr().out
    assert main(["check", str(path), "--today", "2027-01-11", "--strict"]) == 1
    assert "[stale]" in capsys.readouterr().out
    assert main(["check", str(path), "--today", "2027-01-01", "--strict"]) == 0
def test_check_shows_where_reports_go_and_warns_about_http(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    https = CLEAN.replace("version: 1\n", "version: 1\nreport_uri: https://c.example/r\n"
                          "report_dedupe: 30m\n")
    assert main(["check", str(write(tmp_path, https)), "--today", "2026-12-01"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1].endswith(
        "unpinned allow, on_expiry report, reports to https://c.example/r, report dedupe 30m")
    assert "plaintext-report-uri" not in out
    # the twin: an http:// (loopback) collector loads, with a warning at its rule
    http = CLEAN.replace(f'    pins: ["{ROOT}"',
                         f'    report_uri: http://127.0.0.1:9/r\n    pins: ["{ROOT}"', 1)
    path = write(tmp_path, http, "http.yaml")
    assert main(["check", str(path), "--today", "2026-12-01", "--strict"]) == 1
    out = capsys.readouterr().out
    assert f"{path}:3: warning: api.example.com: report_uri 'http://127.0.0.1:9/r' is " \
           "http://" in out
    assert "[plaintext-report-uri]" in out
    assert main(["check", str(path), "--today", "2026-12-01"]) == 0
    assert "1 rule with its own report_uri, report dedupe 24h; 1 warning" in \
        capsys.readouterr().out
