"""Streamed deltas hold back only the end of the text that could still become a stop string (runner.engine.generate)."""

from __future__ import annotations

import pytest

from runner.engine.generate import _stop_prefix_tail, _Tracker


class PieceTokenizer:
    """Each id decodes to its own piece of text: enough for the tracker, which decodes the ids it has so far."""

    def __init__(self, pieces: list[str]):
        self.pieces = pieces

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.pieces[i] for i in ids)


@pytest.mark.parametrize(
    ("text", "stops", "held"),
    [
        ("hello wor", ["world"], 3),  # "wor" may still become "world"
        ("hello", ["xyz"], 0),  # nothing can: all of it is final
        ("ab", ["abc", "b!"], 2),  # the longest candidate wins
        ("aab", ["aabx", "bq"], 3),
        ("", ["END"], 0),
        ("END", ["END"], 0),  # a complete stop is the tracker's find(), not a tail
    ],
)
def test_the_held_back_tail_is_the_longest_end_that_starts_a_stop(text, stops, held):
    assert _stop_prefix_tail(text, stops) == held


def stream(pieces: list[str], stops: list[str]) -> tuple[list[list[str]], str]:
    """Push each piece as a token; the deltas sent after each push, and the final text."""
    deltas: list[str] = []
    tracker = _Tracker(PieceTokenizer(pieces), stops, None, deltas.append, eos_ids=set())
    after_each = []
    for token in range(len(pieces)):
        tracker.push(token)
        after_each.append(list(deltas))
    return after_each, tracker.finish()


def test_text_that_cannot_start_a_stop_is_sent_with_its_token():
    after_each, text = stream(["Hi", " the", "E", "N", "D", " more"], ["END"])
    assert after_each[0] == ["Hi"]  # a fixed hold-back of len("END") - 1 characters would still sit on it
    assert after_each[1] == ["Hi", " the"]
    assert after_each[3] == ["Hi", " the"]  # "E", then "EN": possibly the stop, held
    assert text == "Hi the" and "".join(after_each[-1]) == "Hi the"  # the stop and what follows never leave


def test_a_false_start_of_a_stop_is_sent_once_it_cannot_match():
    after_each, text = stream(["a", "E", "x", "END"], ["END"])
    assert after_each[1] == ["a"]
    assert "".join(after_each[2]) == "aEx"
    assert text == "aEx"


def test_half_a_multibyte_character_still_waits_for_the_rest():
    after_each, text = stream(["ok ", "\ufffd", "é"], [])
    assert "".join(after_each[1]) == "ok "
    assert "".join(after_each[2]) == text == "ok \ufffdé"
