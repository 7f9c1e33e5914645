"""A Sphinx extension for the book (listed in ``_config.yml``): math that renders offline.

MathJax 3 comes from a registry package (``django-static-mathjax``, imported as ``mathjax``;
it holds MathJax's own ``es5`` build and nothing else is used of it). After an HTML build the
files the book needs are copied to ``_static/mathjax/``, where ``_config.yml``'s
``mathjax_path: mathjax/tex-chtml.js`` points: the TeX-to-HTML component, its fonts and the
TeX extensions it loads on demand. No page fetches anything from the network.
"""
from __future__ import annotations

import shutil
from pathlib import Path

__all__ = ["FILES", "copy_mathjax", "mathjax_root", "setup"]

#: What of MathJax's es5 build the book serves (files and folders, relative to es5/).
FILES = ("tex-chtml.js", "output/chtml/fonts/woff-v2", "input/tex/extensions")


def mathjax_root() -> Path:
    """MathJax's ``es5`` folder inside the installed registry package."""
    import mathjax

    root = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    if not (root / FILES[0]).is_file():
        raise FileNotFoundError(f"mathjax package at {root} has no {FILES[0]}: reinstall "
                                "django-static-mathjax (pyproject.toml)")
    return root


def copy_mathjax(outdir: str | Path) -> Path:
    """Copy :data:`FILES` into ``<outdir>/_static/mathjax``; return that folder."""
    source, target = mathjax_root(), Path(outdir) / "_static" / "mathjax"
    for name in FILES:
        if (source / name).is_dir():
            shutil.copytree(source / name, target / name, dirs_exist_ok=True)
        else:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, target / name)
    return target


def _finished(app, exception) -> None:
    if exception is None and app.builder.format == "html":
        copy_mathjax(app.outdir)


def setup(app):
    app.connect("build-finished", _finished)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
