"""The chaos report's scenario lines read as sentences, whichever part of the run wrote a note."""
from __future__ import annotations

from floodgate.chaos.checker import check
from floodgate.chaos.report import markdown, row
from tests.unit.test_chaos_checker import clean


def test_each_note_ends_as_a_sentence_once() -> None:
    verdict = check(clean())
    verdict.notes += ["broker 2 restarted", "The stall watchdog fired 0 time(s) in the workers' logs.",
                      "3 requests refused (sent again as new jobs)"]
    text = markdown([row(verdict, "a broker restarted", "4")])
    assert ("broker 2 restarted. The stall watchdog fired 0 time(s) in the workers' logs. "
            "3 requests refused (sent again as new jobs).") in text
    assert "| clean | 4 | 4 | 4 | 0 |" in text and "| met |" in text
