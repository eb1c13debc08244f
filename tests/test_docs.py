"""The README stays a ten-minute read, and its links and the reference pages' links lead somewhere.

The reference pages' content is checked where the code is: every setting in
docs/configuration.md (tests/test_config.py), the verdict contract and its schema in
docs/mes-contract.md (tests/test_mes_contract.py), the SQL cookbook in docs/analytics.md
(tests/test_analytics.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
PAGES = sorted(DOCS.glob("*.md"))
README_MAX_LINES = 300

# [text](target) outside code; images too. Targets with a scheme (https:, mailto:) are external.
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^(```|~~~)")


def _prose(text: str) -> list[str]:
    """The lines outside fenced code blocks (a '# comment' in a bash block is no heading)."""
    lines, in_code = [], False
    for line in text.splitlines():
        if _FENCE.match(line.lstrip()):
            in_code = not in_code
        elif not in_code:
            lines.append(line)
    return lines


def links(path: Path) -> list[str]:
    return [m.group(1) for line in _prose(path.read_text()) for m in _LINK.finditer(line)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(line.lstrip("#")) for line in _prose(path.read_text()) if re.match(r"#{1,6} ", line)}


def test_readme_is_a_ten_minute_read() -> None:
    lines = len(README.read_text().splitlines())
    assert lines < README_MAX_LINES, f"README.md has {lines} lines; move reference material to docs/"


def test_readme_links_every_reference_page_and_each_exists() -> None:
    linked = {target.split("#", 1)[0] for target in links(README) if target.startswith("docs/")}
    pages = {f"docs/{page.name}" for page in PAGES}
    assert linked, "the README links no docs/ page"
    assert not linked - pages, f"README links missing pages: {sorted(linked - pages)}"
    assert not pages - linked, f"docs pages the README does not link: {sorted(pages - linked)}"


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_and_anchors_resolve(page: Path) -> None:
    broken = []
    for target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            continue  # external
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if not resolved.exists():
            broken.append(f"{target}: no {resolved.relative_to(REPO) if resolved.is_relative_to(REPO) else resolved}")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading #{anchor} in {resolved.relative_to(REPO)}")
    assert not broken, "\n".join(broken)


def test_slug_follows_github() -> None:
    assert slug("Train on your product") == "train-on-your-product"
    assert slug("Scaling: partitions per line") == "scaling-partitions-per-line"
    assert slug("3. Write frames from any language") == "3-write-frames-from-any-language"
    assert slug("Kafka: TLS and SASL") == "kafka-tls-and-sasl"
    assert slug("Grafana: the same view for a plant") == "grafana-the-same-view-for-a-plant"


def test_license_is_the_apache_license_pyproject_names() -> None:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    text = (REPO / "LICENSE").read_text()
    assert project["license"] == "Apache-2.0" and "LICENSE" in project["license-files"]
    assert "Apache License\n                           Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and "APPENDIX: How to apply the Apache License" in text


def test_every_test_the_docs_name_exists() -> None:
    """A page that says "tested by `test_x`" must not outlive `test_x`."""
    defined = {m.group(1) for path in (REPO / "tests").rglob("*.py")
               for m in re.finditer(r"^\s*(?:async )?def (test_\w+)", path.read_text(), re.M)}
    named = {(page.relative_to(REPO).as_posix(), name) for page in [README, *PAGES]
             for name in re.findall(r"`(test_\w+)`", page.read_text())}
    assert len(named) > 10  # the guarantees table names its tests
    missing = sorted(f"{page}: {name}" for page, name in named if name not in defined)
    assert not missing, "\n".join(missing)


_SOURCE_PATH = re.compile(r"`((?:analytics|api|benchmarks|deploy|docs|engines|gates|inspection|lineguard|processors|producers"
                          r"|schemas|sinks|stores|tests)/[\w./-]+\.(?:py|json|yml|md|sh|xml|toml))`")


def test_every_source_file_the_docs_name_exists() -> None:
    """Files move; a page that sends the reader to `processors/heatmap.py` after it moved is wrong."""
    named = {(page, path) for page in [README, *PAGES] for path in _SOURCE_PATH.findall(page.read_text())}
    assert named
    # A path is from the repository root, or from the page's folder (docs/benchmarks/engine.md).
    missing = sorted(f"{page.relative_to(REPO)}: {path}" for page, path in named
                     if not (REPO / path).exists() and not (page.parent / path).exists())
    assert not missing, "\n".join(missing)
