"""The notebook runner: parameters by profile, skip-if-unchanged, no stamp on failure."""
import json

import nbformat
import pytest

from layerif import study

NOTEBOOK = """---
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
assert x != 99, "x=99 is the planted failure"
print("result", x * 21, profile)
```
"""


@pytest.fixture
def root(tmp_path):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "toy.md").write_text(NOTEBOOK)
    (tmp_path / "params" / "cpu").mkdir(parents=True)
    (tmp_path / "params" / "cpu" / "toy.yaml").write_text("x: 3\n")
    return tmp_path


def _printed(path):
    nb = nbformat.read(path, as_version=4)
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []))


def test_profile_params_injected_and_unchanged_runs_skipped(root):
    out = study.run_notebook("toy", "cpu", root=root, progress=False)
    assert "result 63 cpu" in _printed(out)
    first = out.stat().st_mtime_ns
    again = study.run_notebook("toy", "cpu", root=root, progress=False)
    assert again.stat().st_mtime_ns == first  # skipped: nothing changed
    (root / "params" / "cpu" / "toy.yaml").write_text("x: 5\n")
    study.run_notebook("toy", "cpu", root=root, progress=False)
    assert "result 105 cpu" in _printed(out)
    stamp = json.loads((out.parent / ".stamps" / "toy.json").read_text())
    assert stamp["params"] == {"x": 5, "profile": "cpu"}


def test_failed_run_leaves_no_stamp(root):
    from papermill.exceptions import PapermillExecutionError

    with pytest.raises(PapermillExecutionError):
        study.run_notebook("toy", "cpu", params={"x": 99}, root=root, progress=False)
    assert not (root / "book" / "executed" / ".stamps" / "toy.json").exists()


def test_bad_names():
    with pytest.raises(ValueError, match="profile='laptop'"):
        study.load_params("toy", "laptop")
    with pytest.raises(ValueError, match="name='nope'"):
        study.run_notebook("nope", "cpu")
