"""Fuzz the configuration parser: only ConfigError may escape, and whatever
parses prints to a canonical form that parses back to the same model."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmdnet.config import Config, ConfigError, default_config_text, normalize, parse_text
from vmdnet.config.lexer import KEYWORDS

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
SEEDS = [default_config_text()] + [
    p.read_text() for p in sorted(CONFIG_DIR.glob("[0-9][0-9]-pass-*.conf"))
]
# Pieces worth splicing in: the grammar's own words and punctuation.
PIECES = sorted(KEYWORDS) + list("{}=,$\"'\\#\n\t :/") + ["\\\n", "$x", "x = ", "1G", "-1"]

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check(text: str | bytes) -> None:
    """The invariant: a Config or a ConfigError, and a Config round-trips."""
    try:
        config = parse_text(text, filename="fuzz.conf", base_dir=str(CONFIG_DIR))
    except ConfigError as exc:
        assert exc.errors and all(d.message for d in exc.errors)
        return
    assert isinstance(config, Config)
    printed = normalize(config)
    again = parse_text(printed, filename="normalized")
    assert again == config
    assert normalize(again) == printed


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes(data: bytes) -> None:
    check(data)


@FUZZ
@given(st.lists(st.sampled_from(PIECES + list("abz019.-_")), max_size=60))
def test_random_token_soup(pieces: list[str]) -> None:
    check("".join(pieces))


@st.composite
def mutated(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = draw(st.sampled_from(PIECES)) if action != "delete" else ""
        cut = draw(st.integers(0, 8)) if action != "insert" else 0
        text = text[:pos] + piece + text[pos + cut :]
    return text


@FUZZ
@given(mutated())
def test_mutated_valid_configs(text: str) -> None:
    check(text)
