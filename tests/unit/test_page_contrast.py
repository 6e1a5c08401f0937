"""The pages' text colours keep WCAG AA contrast (4.5:1) on the backgrounds they are used on, as
app.css pairs them: a colour change that makes text hard to read fails here."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

CSS = (Path(__file__).resolve().parents[2] / "floodgate/api/static/app.css").read_text()


def colour(name: str) -> str:
    if name.startswith("#"):
        return name
    match = re.search(rf"--{name}:\s*(#[0-9a-fA-F]{{6}})", CSS)
    assert match, f"--{name} is not defined in app.css"
    return match.group(1)


def luminance(hex_colour: str) -> float:
    channels = [int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: str, b: str) -> float:
    high, low = sorted((luminance(colour(a)), luminance(colour(b))), reverse=True)
    return (high + 0.05) / (low + 0.05)


# (text, background) as app.css uses them: body and notes, links, buttons, badges, errors, the stage.
PAIRS = [("ink", "paper"), ("ink", "ground"), ("muted", "paper"), ("muted", "ground"), ("accent", "ground"),
         ("accent-ink", "accent"), ("bad", "paper"), ("good", "#d1fae5"), ("bad", "#fde2e2"),
         ("#1e3a8a", "#dbeafe"), ("#4a4a4a", "#e5e7eb"), ("#e5e7eb", "#111827"), ("#bfdbfe", "#111827")]


@pytest.mark.parametrize(("text", "background"), PAIRS)
def test_text_is_readable(text: str, background: str) -> None:
    assert contrast(text, background) >= 4.5
    assert colour(text).lower() in CSS.lower() and colour(background).lower() in CSS.lower()
