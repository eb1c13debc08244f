"""The parts meet only through topics and ``schemas``: an import check over the source tree.

Each rule names a folder and the modules it must never import (at any depth: a
function-level import counts as much as one at the top). The check parses the
files, so it fails the moment someone adds such an import, whether or not that
code path runs in a test.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# folder on disk -> the package it installs as (pyproject.toml's package-dir)
PACKAGE_OF = {
    "analytics": "lineguard.analytics",
    "api": "lineguard.api",
    "benchmarks": "lineguard.benchmarks",
    "deploy": "lineguard.deploy",
    "engines": "lineguard.engines",
    "gates": "lineguard.gates",
    "inspection": "lineguard.inspection",
    "processors": "lineguard.processors",
    "producers": "lineguard.producers",
    "schemas": "lineguard.schemas",
    "sinks": "lineguard.sinks",
    "stores": "lineguard.stores",
}

KAFKA_CODE = ("confluent_kafka", "faust", "aiokafka", "mode", "lineguard.kafka")
OURS = ("lineguard",)

# folder -> module prefixes it must not import, and why
RULES: dict[str, tuple[tuple[str, ...], str]] = {
    "analytics": (("lineguard.sinks", "lineguard.processors", "lineguard.producers"),
                  "the read side reads stores, not sinks or processors"),
    "api": (("lineguard.sinks", "lineguard.processors", "lineguard.producers"),
            "the read side reads stores and the inspection core"),
    "schemas": (OURS, "the contract depends on nothing of ours"),
    "engines": (KAFKA_CODE, "engines know nothing of Kafka"),
    "inspection": (KAFKA_CODE + ("lineguard.processors", "lineguard.api", "lineguard.sinks",
                                 "lineguard.producers"),
                   "the inspection core serves processors and API alike"),
    "stores": (KAFKA_CODE + ("lineguard.sinks", "lineguard.processors", "lineguard.producers",
                             "lineguard.api", "lineguard.analytics"),
               "stores are read and written without Kafka"),
    "producers": (("lineguard.processors", "lineguard.sinks"), "parts meet only through topics"),
    "processors": (("lineguard.producers", "lineguard.sinks"), "parts meet only through topics"),
    "sinks": (("lineguard.producers", "lineguard.processors"), "parts meet only through topics"),
    "gates": (("lineguard.producers", "lineguard.processors", "lineguard.sinks"), "parts meet only through topics"),
    "deploy": (("lineguard.deploy.cli",), "the CLI drives the stack modules; the reverse is an import cycle"),
}


def imported_modules(path: Path, package: str) -> set[str]:
    """Every module ``path`` imports, relative imports resolved against ``package``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.add(target)
            # `from lineguard import sinks` imports lineguard.sinks
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _own(module: str, folder: str, forbidden: str) -> bool:
    """A folder may import itself, even when a rule forbids a wider prefix ("lineguard")."""
    own = PACKAGE_OF[folder]
    return _within(module, own) and _within(own, forbidden)


def _package_for(path: Path, folder: str) -> str:
    relative = path.relative_to(REPO_ROOT / folder).parent
    return ".".join([PACKAGE_OF[folder], *relative.parts])


def _violations(folder: str) -> list[str]:
    forbidden, _ = RULES[folder]
    found = []
    for path in sorted((REPO_ROOT / folder).rglob("*.py")):
        for module in imported_modules(path, _package_for(path, folder)):
            if any(_within(module, p) and not _own(module, folder, p) for p in forbidden):
                found.append(f"{path.relative_to(REPO_ROOT)} imports {module}")
    return found


@pytest.mark.parametrize("folder", sorted(RULES))
def test_folder_imports_only_what_its_room_allows(folder: str) -> None:
    assert (REPO_ROOT / folder).is_dir(), folder
    _, why = RULES[folder]
    assert _violations(folder) == [], why


def test_the_check_sees_relative_and_function_level_imports(tmp_path: Path) -> None:
    source = tmp_path / "mod.py"
    source.write_text("def f():\n    from ..sinks import base\n    import confluent_kafka\n")
    modules = imported_modules(source, "lineguard.api")
    assert "lineguard.sinks.base" in modules
    assert "confluent_kafka" in modules
