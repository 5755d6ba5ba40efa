"""A griffe extension for the API pages: the docstrings' plain-text habits, read as Markdown would misread them.

The source is unchanged; only what the site renders:

* a list written as plain text does ("one error path:\\n  * bad input ...") needs a blank line before its first
  item, or Markdown runs the items into the paragraph;
* shapes written side by side ("[BOS, x] [B, L + 1] ids", "x[B][T]") are a reference link to Markdown, and
  autorefs then looks for an object called "B, L + 1" (a strict build fails): the second bracket is escaped.
"""
from __future__ import annotations

import re

import griffe

_FIRST_ITEM = re.compile(r"(?m)^(?![ \t]*[*-] )(.*\S.*)\n([ \t]{0,3}[*-] )")
_CODE = re.compile(r"(`+)(?:.|\n)*?\1")
_REF = re.compile(r"\] ?\[")


def blank_line_before_lists(text: str) -> str:
    """`text` with a blank line between a paragraph's line and a list item that follows it directly."""
    return _FIRST_ITEM.sub(r"\1\n\n\2", text)


def no_reference_links(text: str) -> str:
    """`text` with "] [" and "][" outside code spans escaped, so that Markdown reads no reference link."""
    out, last = [], 0
    for m in _CODE.finditer(text):
        out.append(_REF.sub(lambda r: r.group(0)[:-1] + "\\[", text[last:m.start()]))
        out.append(m.group(0))
        last = m.end()
    out.append(_REF.sub(lambda r: r.group(0)[:-1] + "\\[", text[last:]))
    return "".join(out)


def markdown_of(text: str) -> str:
    """A docstring as the API pages render it."""
    return no_reference_links(blank_line_before_lists(text))


class DocstringMarkdown(griffe.Extension):
    """Applies `markdown_of` to every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:  # noqa: D102 - griffe's hook
        if obj.docstring is not None:
            obj.docstring.value = markdown_of(obj.docstring.value)
