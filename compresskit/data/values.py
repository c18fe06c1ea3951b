"""What a JSON value must be to serve as an id or a number, and how any value is shown inside a one-line message.

A COCO file is user data: ids may arrive as ``true`` (Python's ``bool`` is an ``int``), numbers as ``NaN`` or as
integers too large for a float, names with newlines or lone surrogates. These helpers answer without raising, so a
check can report such a value instead of crashing on it.
"""

from __future__ import annotations

import math
import reprlib
from typing import Any

MESSAGE_VALUE_CHARS = 80  # a value quoted in a message: enough to recognise it, never a screenful
# COCO nests five levels (file, images, record, segmentation, polygon); tools add a few in metadata. Far deeper
# parses, yet fails later wherever the document is serialised again (json.dumps recurses), so it is refused first.
MAX_JSON_DEPTH = 64

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 3, 6, 4, 60, 60
_REPR.maxlong = 40


def is_int(value: Any) -> bool:
    """A JSON integer (``true`` is not an id)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite JSON number: not ``NaN``/``Infinity``, not ``true``, not an integer beyond float range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer with hundreds of digits is no pixel coordinate
        return False


def nesting_depth_exceeds(document: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether lists and objects nest more than ``limit`` levels deep (walked without recursion)."""
    stack = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (list, dict)):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in (value.values() if isinstance(value, dict) else value)
                         if isinstance(child, (list, dict)))
    return False


def shown(value: Any) -> str:
    """``value`` as a short, single-line repr for a message: nested and long values elided, control characters
    and lone surrogates escaped, so printing the message can neither flood the terminal nor fail."""
    try:
        text = _REPR.repr(value)
    except (RecursionError, ValueError):  # ValueError: an int too long for str() (Python's digit limit)
        text = f"<{type(value).__name__}>"
    return one_line(text)


def one_line(text: str, limit: int = 2 * MESSAGE_VALUE_CHARS) -> str:
    """``text`` with control characters and unencodable code points escaped, cut to ``limit`` characters."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    text = "".join(char if char.isprintable() or char == " " else repr(char)[1:-1] for char in text)
    return text if len(text) <= limit else text[:limit - 3] + "..."
