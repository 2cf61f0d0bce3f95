"""Reproduction cards: every registered algorithm has one, its presets resolve, docs/cards.md is current."""
from pathlib import Path

import pytest

from semisup import cards
from semisup import config as C
from semisup.algorithms import ALGORITHMS
from semisup.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_every_registered_algorithm_has_a_card_and_every_card_an_algorithm():
    assert cards.card_names() == ALGORITHMS.names()


@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_a_card_is_complete_and_its_presets_resolve(name):
    card = cards.load_card(name)
    assert card["name"] == name and card["title"] and card["paper"]
    for ref in card["reference"]:
        assert ref["repo"].count("/") == 1 and ref["file"]
    for p in card["presets"]:
        C.resolve(p["name"])  # raises on an unknown preset or a key that does not exist
    for n in card["published"] + card["ours"]:
        assert n["setting"] and str(n["value"]) and n["source"]
    for d in card["deviations"]:
        assert d["what"] and d["why"]
    if name != "supervised":  # a method: where its behaviour comes from, and semisup's own number
        assert card["reference"] and card["ours"]


def test_docs_cards_md_is_generated_from_the_cards():
    want = cards.render_markdown([cards.load_card(n) for n in cards.card_names()])
    assert (ROOT / "docs" / "cards.md").read_text() == want, "regenerate: python -m semisup.cards > docs/cards.md"


def test_card_command(capsys):
    assert main(["card", "fixmatch"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("FixMatch") and "google-research/fixmatch" in out and "deviation:" in out
    assert main(["card", "nope"]) == 2
    assert "no card for 'nope'" in capsys.readouterr().err
    assert main(["list", "--cards"]) == 0
    assert capsys.readouterr().out.count("\n\n") == len(ALGORITHMS.names()) - 1
