"""The docs tell the truth about settings and engines: every ``NANOGEN_*`` variable that README.md or
docs/*.md names is one nanogen reads, every setting is in the README's settings table, and every
engine a doc configures (``NANOGEN_ENGINE_IMAGES=x``, ``--engines x``) is registered. No server:
the files and the code themselves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nanogen.engines.registry import default_registry
from nanogen.settings import Settings
from tests.conftest import ROOT

DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
NAME = re.compile(r"\bNANOGEN_[A-Z0-9_]*[A-Z0-9](?P<wildcard>_\*)?")
# Read from the environment outside Settings (the SDK, the CLI): os.environ / getenv / typer's envvar=.
READ_ELSEWHERE = re.compile(
    r"""(?:environ\.get\(|environ\[|getenv\(|envvar=)\s*["'](NANOGEN_[A-Z0-9_]+)["']"""
)
# A doc configuring engines: NANOGEN_ENGINE_IMAGES=google, NANOGEN_WORKER_ENGINES=a,b, --engines sandbox.
# Lower-case names only: `--engines E,...` is a placeholder.
ENGINE_VALUE = re.compile(
    r"(?:NANOGEN_ENGINE_[A-Z]+|NANOGEN_WORKER_ENGINES)=(?P<env>[a-z][\w-]*(?:,[a-z][\w-]*)*)"
    r"|--engines[ =](?P<flag>[a-z][\w-]*(?:,[a-z][\w-]*)*)"
)


def settings_variables() -> set[str]:
    prefix = str(Settings.model_config.get("env_prefix", ""))
    assert prefix == "NANOGEN_"
    return {prefix + name.upper() for name in Settings.model_fields}


def variables_read_elsewhere() -> set[str]:
    return {
        match.group(1)
        for path in (ROOT / "src" / "nanogen").rglob("*.py")
        for match in READ_ELSEWHERE.finditer(path.read_text())
    }


def documented(path: Path) -> list[tuple[int, str, bool]]:
    """(line, variable, is a ``NANOGEN_X_*`` wildcard) for each variable the file names."""
    return [
        (number, match.group(0).removesuffix("_*"), bool(match.group("wildcard")))
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        for match in NAME.finditer(line)
    ]


def readme_settings_table() -> set[str]:
    """The variables in the first column of the table under README's "## Settings"."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `NANOGEN_")]
    assert rows, "README.md has no settings table"
    return {match.group(0) for row in rows for match in NAME.finditer(row.split("|")[1])}


def test_the_docs_are_found() -> None:
    names = {path.name for path in DOCS}
    assert {"README.md", "api.md", "deploy.md", "quickstart.md"} <= names, names


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_variable_a_doc_names_is_read_by_nanogen(path: Path) -> None:
    known = settings_variables() | variables_read_elsewhere()
    unknown = [
        f"{path.name}:{number}: {name}{'_*' if wildcard else ''}"
        for number, name, wildcard in documented(path)
        if not (any(k.startswith(name + "_") for k in known) if wildcard else name in known)
    ]
    assert unknown == [], f"documented but not read by nanogen (settings.py or os.environ): {unknown}"


def test_every_setting_is_in_the_readme_settings_table() -> None:
    missing = sorted(settings_variables() - readme_settings_table())
    assert missing == [], f"settings missing from the README's settings table: {missing}"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_engine_a_doc_configures_exists(path: Path) -> None:
    registered = set(default_registry().names())
    unknown = [
        f"{path.name}:{number}: {match.group(0)}"
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        for match in ENGINE_VALUE.finditer(line)
        for engine in (match.group("env") or match.group("flag")).split(",")
        if engine not in registered
    ]
    assert unknown == [], f"engines that do not exist (registered: {sorted(registered)}): {unknown}"


def test_the_checks_catch_what_they_look_for(tmp_path: Path) -> None:
    """The patterns above find a made-up setting, a wildcard and a made-up engine (so the tests
    above could fail)."""
    doc = tmp_path / "doc.md"
    doc.write_text(
        "Set `NANOGEN_NO_SUCH_SETTING=1` and NANOGEN_S3_* and NANOGEN_ENGINE_IMAGES=diffusers, "
        "then `nanogen worker --engines sandbox,imaginary` (not `--engines E,...`).\n"
    )
    assert documented(doc) == [(1, "NANOGEN_NO_SUCH_SETTING", False), (1, "NANOGEN_S3", True),
                               (1, "NANOGEN_ENGINE_IMAGES", False)]  # fmt: skip
    engines = [
        engine
        for match in ENGINE_VALUE.finditer(doc.read_text())
        for engine in (match.group("env") or match.group("flag")).split(",")
    ]
    assert engines == ["diffusers", "sandbox", "imaginary"]
    assert "NANOGEN_NO_SUCH_SETTING" not in settings_variables() | variables_read_elsewhere()
    assert {"NANOGEN_API_KEY", "NANOGEN_BASE_URL"} <= variables_read_elsewhere()
