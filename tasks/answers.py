"""Reading a multiple-choice answer out of free text, as TOMATO's code does."""
from __future__ import annotations

import re

from tasks.types import LETTERS


def parse_answer(response: str, options: list[str], opened: bool = True) -> int | None:
    """TOMATO's regex answer parser -> option index, or None (counted wrong).

    Its rules (src/parse_result.py ``pre_parser``), on the stripped response:
    a bare option letter; the exact ``"X: option text"``; ``Answer is: (X)``
    (their regex, with optional spaces so that ``Answer is: (C)`` matches as
    the paper writes it, and any of the question's letters, not only A-F).
    Their GPT-4o-mini fallback is not available offline. ``opened``: our
    prompts end with ``Best option:(``, so a response ``X)`` / ``X) text``
    closes that parenthesis and names X.
    """
    r = response.strip()
    letters = LETTERS[: len(options)]
    if len(r) == 1 and r.upper() in letters:
        return letters.index(r.upper())
    full = {f"{letters[i]}: {o}".upper(): i for i, o in enumerate(options)}
    if r.upper() in full:
        return full[r.upper()]
    cls = f"[{letters}{letters.lower()}]"
    m = re.match(rf"^Answer is:?\s*\(?\s*({cls})\s*\)?\.?$", r, flags=re.IGNORECASE)
    if m:
        return letters.index(m.group(1).upper())
    if opened:
        m = re.match(rf"^({cls})\s*\)", r)
        if m:
            return letters.index(m.group(1).upper())
    return None
