"""A griffe extension for the API pages: a list in a docstring needs a blank line before it in Markdown.

The docstrings write lists as plain text does ("one error path:\\n  * bad input ..."); Markdown reads such
items as the paragraph's continuation. A blank line is inserted before the first item of each list (only in
what the site renders; the source is unchanged).
"""
from __future__ import annotations

import re

import griffe

_FIRST_ITEM = re.compile(r"(?m)^(?![ \t]*[*-] )(.*\S.*)\n([ \t]{0,3}[*-] )")


def blank_line_before_lists(text: str) -> str:
    """`text` with a blank line between a paragraph's line and a list item that follows it directly."""
    return _FIRST_ITEM.sub(r"\1\n\n\2", text)


class BlankLineBeforeLists(griffe.Extension):
    """Applies `blank_line_before_lists` to every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:  # noqa: D102 - griffe's hook
        if obj.docstring is not None:
            obj.docstring.value = blank_line_before_lists(obj.docstring.value)
