"""The README a newcomer reads, and the docs pages: short, true to the JSON behind them, no dead links."""
import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
TABLE_SCRIPTS = sorted((ROOT / "results").glob("*/table.py"))
APP_COMMAND = "pip install -r requirements.txt && python app.py"
TEST_COMMAND = "pip install -r requirements-dev.txt && python -m pytest -q tests"


def test_the_readme_is_short_opens_with_the_space_card_and_states_the_two_commands():
    text = README.read_text()
    assert len(text) <= 10_000, len(text)
    assert text.startswith("---\ntitle: pdiff\n") and "\napp_file: app.py\n" in text.split("\n---\n", 1)[0]
    assert APP_COMMAND in text and TEST_COMMAND in text
    # .ci/run runs exactly the README's test command
    assert "python -m pytest -q tests" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("path", [README, *PAGES], ids=lambda p: p.name)
def test_no_issue_numbers_load_averages_or_dead_links(path):
    text = path.read_text()
    assert not re.search(r"\bissues? \d+", text, re.I), "a reader cannot see the issue tracker"
    assert not re.search(r"\bload (average|of|~)?\s*\d", text, re.I), "load averages belong in notes, not docs"
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):  # relative links only
        assert (path.parent / target).exists(), f"{path.name} links to {target}, which does not exist"


def _load(script: Path):
    sys.path.insert(0, str(script.parent.parent))
    spec = importlib.util.spec_from_file_location(f"table_{script.parent.name.replace('-', '_')}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines the tables; prints nothing (its __main__ block does not run)
    return module


@pytest.mark.parametrize("script", TABLE_SCRIPTS, ids=lambda p: p.parent.name)
def test_every_docs_table_is_what_its_script_prints_from_the_json(script):
    module = _load(script)
    import tables

    found = 0
    for page in PAGES:
        for name in re.findall(r"<!-- table:([\w-]+) -->", page.read_text()):
            build = getattr(module, "TABLES", {}).get(name)
            if build is None:
                continue
            assert tables.section(page, name) == build().strip(), f"{page.name}: run {script.relative_to(ROOT)} --write"
            found += 1
    assert found == len(module.TABLES), f"{script.relative_to(ROOT)} has tables no page shows"


def test_the_threat_model_tables_weigh_every_victim_once():
    module = _load(ROOT / "results" / "threat-model" / "table.py")
    # victim s1 at two generator seeds (1 and 3), s2 at one (5): s1 counts once, with its mean 2
    value, over_victims, over_seeds = module.balanced({("s1", 0): 1.0, ("s1", 1): 3.0, ("s2", 0): 5.0})
    assert value == pytest.approx(3.5)                      # not (1 + 3 + 5) / 3
    assert over_victims == pytest.approx(2.1213203, rel=1e-6)  # the std of the victim means 2 and 5
    assert over_seeds == pytest.approx(1.4142136, rel=1e-6)    # s1's std over its seeds; s2 has one seed
    assert module.balanced({("s1", 0): 1.0}) == (1.0, None, None)


def _cells(table: str) -> list[list[str]]:
    """A markdown table's body rows, each a list of its stripped cells."""
    return [[c.strip() for c in row.strip().strip("|").split("|")] for row in table.splitlines()[2:]]


def test_the_readme_compares_acc_best_with_the_top_10_percent_chosen_on_validation():
    """The bar comes from the shipped bundle (conditions-bar); the top 10 % by test accuracy is named an oracle."""
    rows = _cells(_load(ROOT / "results" / "conditions" / "table.py").bar_table())
    by_validation = next(r for r in rows if r[:2] == ["top 10 %", "validation"])[4]
    oracle = next(r for r in rows if r[1].startswith("test"))[4]
    text = " ".join(README.read_text().split())
    assert f"top 10 % chosen on validation ({by_validation})" in text and f"({oracle}, an oracle)" in text


def test_the_readme_gaussian_finding_is_the_generator_table():
    """The README's first finding quotes the DDPM rows of docs/memorisation.md's generator table."""
    rows = [r for r in _cells(_load(ROOT / "results" / "generator" / "table.py").generator()) if r[0].startswith("DDPM")]
    means, curves = [float(r[1]) for r in rows], [float(r[6]) for r in rows]
    text = " ".join(README.read_text().split())
    assert f"({min(curves):.2f} to {max(curves):.2f} % against {min(means):.2f} to {max(means):.2f} %" in text
