"""The committed book is current: every committed ``book/executed/*.ipynb`` records the digest
of its source, its ``params/cpu`` file and its upstream notebooks' records as they are now.

A notebook edited (or re-parameterised, or downstream of a re-run) without re-running it
fails here with the command that fixes it.
"""
import subprocess
from pathlib import Path

import pytest

from layerif import study

CHECKOUT = Path(__file__).resolve().parent.parent


def committed_notebooks(root: Path) -> list[str]:
    """Names of the executed book notebooks git tracks under ``root`` (all present ones
    when ``root`` is not a git checkout)."""
    listed = subprocess.run(["git", "-C", str(root), "ls-files", "--", "book/executed/*.ipynb"],
                            capture_output=True, text=True)
    if listed.returncode == 0:
        paths = [root / line for line in listed.stdout.splitlines()]
    else:
        paths = list((root / "book" / "executed").glob("*.ipynb"))
    return sorted(p.stem for p in paths if p.exists())


def book_problems(root: Path) -> list[str]:
    """One sentence per committed book notebook that is not current with its inputs."""
    names = committed_notebooks(root)
    table = study.status(study.BOOK_PROFILE, root)
    problems = []
    for name in names:
        if name not in table.index:
            problems.append(f"book/executed/{name}.ipynb is committed but notebooks/{name}.md "
                            "does not exist: restore the source or delete the executed notebook")
        elif table.loc[name, "changed"]:
            row = table.loc[name]
            problems.append(row["message"] if row["state"] == "stale"
                            else f"{name} is stale ({row['changed']}); {row['message']}")
    return problems


def test_committed_book_notebooks_are_current():
    if not committed_notebooks(CHECKOUT):
        pytest.skip("no executed notebook is committed under book/executed/ yet")
    problems = book_problems(CHECKOUT)
    assert not problems, "\n".join(problems)


TOY = """---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---

# toy

```{code-cell} ipython3
:tags: [parameters]

profile = "smoke"
x = 2
```

```{code-cell} ipython3
print(x)
```
"""


def test_guard_names_the_edited_notebook(tmp_path):
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t",
                        *args], check=True, capture_output=True)

    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "toy.md").write_text(TOY)
    git("init", "-q")
    assert committed_notebooks(tmp_path) == []
    study.run_notebook("toy", "cpu", root=tmp_path, progress=False)
    git("add", ".")
    git("commit", "-qm", "executed toy")
    assert committed_notebooks(tmp_path) == ["toy"]
    assert book_problems(tmp_path) == []
    (tmp_path / "notebooks" / "toy.md").write_text(TOY.replace("x = 2", "x = 3"))
    assert book_problems(tmp_path) == [
        "notebooks/toy.md edited without re-running it: run `layerif run toy --profile cpu`"]
    (tmp_path / "params" / "cpu").mkdir(parents=True)
    (tmp_path / "params" / "cpu" / "toy.yaml").write_text("x: 4\n")
    assert "params/cpu/toy.yaml changed" in book_problems(tmp_path)[0]
