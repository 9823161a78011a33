"""The README stays a user guide whose layout section matches the tree."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PACKAGE = ROOT / "src" / "zerosearch"


def _layout_block() -> str:
    section = README.split("## Layout", 1)[1]
    return section.split("```", 2)[1]


def test_the_readme_is_at_most_250_lines():
    assert len(README.splitlines()) <= 250


def test_the_layout_names_every_module_and_package_of_the_library_and_nothing_else():
    tree = {p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    tree |= {p.name + "/" for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    lines = _layout_block().split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("src/zerosearch/"))
    library = []
    for line in lines[start + 1:]:
        if line and not line.startswith(" "):  # the next top-level folder (benchmarks/, docs/)
            break
        library.append(line)
    named = set(re.findall(r"\b[a-z_]+\.py\b|\b[a-z_]+/(?=\s|$)", "\n".join(library)))
    assert tree - named == set(), "modules the README's layout does not show"
    assert named - tree == set(), "names in the README's layout that are not in src/zerosearch"
