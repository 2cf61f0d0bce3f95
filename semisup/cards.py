"""Reproduction cards: for each registered algorithm, its paper, reference code, the presets of its
protocol, the published numbers, what semisup measured with the command, and every remaining deviation
from the reference with its reason (and, where measured, its effect).

One YAML file per algorithm in semisup/algorithms/cards/. `semisup card NAME` prints one, `semisup list
--cards` all of them; docs/cards.md is generated from them (``python -m semisup.cards > docs/cards.md``;
a test fails when it is stale, when a registered algorithm has no card, or when a card's preset does not
resolve).
"""
from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import yaml

from .errors import ConfigError

CARD_DIR = Path(__file__).resolve().parent / "algorithms" / "cards"
FIELDS = ("name", "title", "paper", "reference", "presets", "published", "ours", "deviations")


def card_names() -> list[str]:
    return sorted(p.stem for p in CARD_DIR.glob("*.yaml"))


def load_card(name: str) -> dict:
    path = CARD_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"no card for {name!r}; cards: {', '.join(card_names())}")
    card = yaml.safe_load(path.read_text())
    missing = [f for f in FIELDS if f not in card]
    if missing:
        raise ValueError(f"card {path} lacks {', '.join(missing)}")
    return card


def _wrap(text: str, indent: str) -> str:
    return textwrap.fill(" ".join(str(text).split()), 110, initial_indent=indent,
                         subsequent_indent=" " * len(indent) + "  ")


def render_text(card: dict) -> str:
    """A card as plain text for the terminal."""
    p = card["paper"]
    out = [f"{card['title']} ({card['name']})", _wrap(p, "  paper: ")]
    for r in card["reference"] or []:
        out.append(_wrap(f"{r['repo']}, {r['file']}" + (f": {r['note']}" if r.get("note") else ""), "  reference: "))
    for pr in card["presets"] or []:
        out.append(_wrap(f"{pr['name']}: {pr['protocol']}", "  preset: "))
    for n in card["published"] or []:
        out.append(_wrap(f"{n['setting']}: {n['value']} ({n['source']})", "  published: "))
    for n in card["ours"] or []:
        out.append(_wrap(f"{n['setting']}: {n['value']} ({n['source']})", "  ours: "))
        if n.get("command"):
            out.append(_wrap(n["command"], "      $ "))
    for d in card["deviations"] or []:
        line = f"{d['what']} Why: {d['why']}" + (f" Effect: {d['effect']}" if d.get("effect") else "")
        out.append(_wrap(line, "  deviation: "))
    return "\n".join(out)


def _cell(text) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def render_markdown(cards: list[dict]) -> str:
    """docs/cards.md."""
    out = ["# Reproduction cards", "",
           "Generated from semisup/algorithms/cards/*.yaml by `python -m semisup.cards > docs/cards.md`; "
           "`semisup card NAME` prints one. Each card: the paper, the reference code whose behaviour is semisup's "
           "default, the presets of the paper's protocol, the published numbers, semisup's own at its CPU budget "
           "(with the command), and each remaining deviation with its reason.", ""]
    for c in cards:
        out += [f"## {c['title']} (`{c['name']}`)", "", f"**Paper.** {_cell(c['paper'])}", ""]
        refs = c["reference"] or []
        out.append("**Reference code.** " + ("; ".join(
            f"`{r['repo']}` `{r['file']}`" + (f" ({_cell(r['note'])})" if r.get("note") else "") for r in refs)
            or "none (a baseline)"))
        out.append("")
        if c["presets"]:
            out += ["**Presets.**", ""] + [f"- `{p['name']}`: {_cell(p['protocol'])}" for p in c["presets"]] + [""]
        if c["published"]:
            out += ["**Published.**", "", "| setting | value | source |", "|---|---|---|"]
            out += [f"| {_cell(n['setting'])} | {_cell(n['value'])} | {_cell(n['source'])} |" for n in c["published"]]
            out.append("")
        if c["ours"]:
            out += ["**semisup.**", "", "| setting | value | source |", "|---|---|---|"]
            out += [f"| {_cell(n['setting'])} | {_cell(n['value'])} | {_cell(n['source'])} |" for n in c["ours"]]
            out.append("")
            out += [f"- `{_cell(n['command'])}`" for n in c["ours"] if n.get("command")]
            out.append("")
        if c["deviations"]:
            out += ["**Deviations from the reference code.**", ""]
            for d in c["deviations"]:
                eff = f" *Effect:* {_cell(d['effect'])}" if d.get("effect") else ""
                out.append(f"- {_cell(d['what'])} *Why:* {_cell(d['why'])}{eff}")
            out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(render_markdown([load_card(n) for n in card_names()]))
