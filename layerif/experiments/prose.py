"""A notebook's conclusion as rendered Markdown (not a printed line that runs off the page)."""
from __future__ import annotations

__all__ = ["bullets"]


def bullets(lines, intro: str = ""):
    """``lines`` (strings, or one string of lines) as a Markdown bullet list under ``intro``,
    displayed by IPython as rendered Markdown (``text/markdown``) and printed as plain text."""
    from IPython.display import Markdown

    items = lines.splitlines() if isinstance(lines, str) else list(lines)
    body = "\n".join(f"- {line.strip()}" for line in items if line.strip())
    return Markdown(f"{intro}\n\n{body}" if intro else body)
