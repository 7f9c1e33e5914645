"""The notebooks hold no logic: every code cell calls the package and shows the result.

A code cell other than the parameters cell holds no loop, branch or comprehension and at
most eight lines of code; the parameters cell assigns plain literals only (papermill and
`layerif run --params` replace them). Logic belongs in `layerif.experiments`, with a test.
"""
import ast
from pathlib import Path

import jupytext
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.md"))
LOGIC = (ast.For, ast.AsyncFor, ast.While, ast.If, ast.IfExp, ast.Try, ast.ListComp,
         ast.DictComp, ast.SetComp, ast.GeneratorExp, ast.FunctionDef, ast.Lambda, ast.ClassDef)
MAX_LINES = 8


def _code(source: str) -> str:
    # IPython magics (%matplotlib inline) are not Python
    return "\n".join(line for line in source.splitlines() if not line.lstrip().startswith("%"))


def _cells(path: Path):
    return [c for c in jupytext.read(path).cells if c.cell_type == "code"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_code_cells_hold_no_logic(path):
    offending = []
    for i, cell in enumerate(_cells(path)):
        tree = ast.parse(_code(cell.source))
        if "parameters" in cell.metadata.get("tags", []):
            for node in tree.body:
                assert isinstance(node, (ast.Assign, ast.AnnAssign)), (path.stem, ast.dump(node)[:80])
                ast.literal_eval(node.value)  # raises on anything but a literal
            continue
        lines = [ln for ln in _code(cell.source).splitlines()
                 if ln.strip() and not ln.strip().startswith("#")]
        kinds = sorted({type(n).__name__ for n in ast.walk(tree) if isinstance(n, LOGIC)})
        if kinds or len(lines) > MAX_LINES:
            offending.append(f"cell {i}: {kinds or f'{len(lines)} lines'}: {lines[0][:60]}")
    assert not offending, f"{path.name}: " + "; ".join(offending)


def test_the_rule_catches_a_loop_and_a_long_cell(tmp_path):
    # The check itself: a notebook with a loop in one cell and nine lines in another fails.
    bad = tmp_path / "bad.md"
    body = "\n".join(f"x{i} = {i}" for i in range(9))
    bad.write_text("---\njupytext:\n  text_representation:\n    extension: .md\n    format_name: myst\n"
                   "kernelspec:\n  display_name: Python 3\n  language: python\n  name: python3\n---\n\n"
                   "```{code-cell} ipython3\nfor i in range(3):\n    print(i)\n```\n\n"
                   f"```{{code-cell}} ipython3\n{body}\n```\n")
    with pytest.raises(AssertionError, match=r"cell 0: \['For'\].*cell 1: 9 lines"):
        test_code_cells_hold_no_logic(bad)
