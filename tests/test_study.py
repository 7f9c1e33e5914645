"""The notebook runner: profiles, upstream-aware skipping, the record inside the executed
notebook, the provenance note, and failures that never look current."""
import hashlib
import json
import re
import subprocess

import nbformat
import pytest

from layerif import cli, study
from layerif.notebook_record import PROVENANCE_TAG

FRONT = """---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3
  language: python
  name: python3
{extra}---
"""

TOY = FRONT.format(extra="") + """
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

# a saves a result; b (which declares it needs a) reads it back.
A = FRONT.format(extra="") + """
# a

```{code-cell} ipython3
:tags: [parameters]

profile = "smoke"
x = 1
```

```{code-cell} ipython3
import pathlib
out = pathlib.Path("..") / "results" / profile
out.mkdir(parents=True, exist_ok=True)
(out / "a.txt").write_text(str(x))
```
"""

B = FRONT.format(extra="layerif:\n  needs: [a]\n") + """
# b

```{code-cell} ipython3
:tags: [parameters]

profile = "smoke"
y = 1
```

```{code-cell} ipython3
import pathlib
print("b sees", int((pathlib.Path("..") / "results" / profile / "a.txt").read_text()) + y)
```
"""


def _write(root, files):
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture
def root(tmp_path):
    return _write(tmp_path, {"notebooks/toy.md": TOY, "params/cpu/toy.yaml": "x: 3\n"})


@pytest.fixture
def chain(tmp_path):
    return _write(tmp_path, {"notebooks/a.md": A, "notebooks/b.md": B,
                             "params/cpu/a.yaml": "x: 10\n", "params/cpu/b.yaml": "y: 5\n"})


def _printed(path):
    nb = nbformat.read(path, as_version=4)
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []))


def _record(path):
    return nbformat.read(path, as_version=4).metadata["layerif"]


def _run_ids(root, names=("a", "b")):
    return {n: _record(root / "book" / "executed" / f"{n}.ipynb")["run_id"] for n in names}


def _git(root, *args):
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)


def test_profile_params_injected_and_unchanged_runs_skipped(root):
    out = study.run_notebook("toy", "cpu", root=root, progress=False)
    assert out == root / "book" / "executed" / "toy.ipynb"
    assert "result 63 cpu" in _printed(out)
    first = out.stat().st_mtime_ns
    again = study.run_notebook("toy", "cpu", root=root, progress=False)
    assert again.stat().st_mtime_ns == first  # skipped: nothing changed
    (root / "params" / "cpu" / "toy.yaml").write_text("x: 5\n")
    study.run_notebook("toy", "cpu", root=root, progress=False)
    assert "result 105 cpu" in _printed(out)
    record = _record(out)
    assert record["params"] == {"x": 5, "profile": "cpu"}
    # The digest is the documented one: sha256 of the canonical JSON of the four inputs.
    inputs = {"source_sha256": hashlib.sha256(TOY.encode()).hexdigest(), "profile": "cpu",
              "params": {"x": 5, "profile": "cpu"}, "needs": {}}
    canonical = json.dumps(inputs, sort_keys=True).encode()
    assert record["digest"] == hashlib.sha256(canonical).hexdigest()
    # Outside git (if tmp is outside any checkout) the commit is None, else git's HEAD.
    head = _git(root, "rev-parse", "HEAD")
    assert record["commit"] == (head.stdout.strip() if head.returncode == 0 else None)
    # Another profile writes elsewhere and leaves the cpu notebook alone.
    smoke = study.run_notebook("toy", "smoke", root=root, progress=False)
    assert smoke == root / "results" / "smoke" / "executed" / "toy.ipynb"
    assert "result 42 smoke" in _printed(smoke) and "result 105 cpu" in _printed(out)


def test_upstream_reruns_reach_dependents(chain, monkeypatch):
    study.run_all("cpu", root=chain, progress=False)
    assert "b sees 15" in _printed(chain / "book" / "executed" / "b.ipynb")
    a, b = (_record(chain / "book" / "executed" / f"{n}.ipynb") for n in "ab")
    assert b["needs"] == {"a": {"digest": a["digest"], "run_id": a["run_id"]}}
    assert set(study.status("cpu", chain)["state"]) == {"current"}
    ids = _run_ids(chain)
    study.run_all("cpu", root=chain, progress=False)
    assert _run_ids(chain) == ids  # nothing changed: both skipped

    (chain / "params" / "cpu" / "a.yaml").write_text("x: 20\n")
    table = study.status("cpu", chain)
    assert table.loc["a", "changed"] == "params" and table.loc["b", "state"] == "current"
    study.run_all("cpu", root=chain, progress=False)
    new = _run_ids(chain)
    assert new["a"] != ids["a"] and new["b"] != ids["b"]
    assert "b sees 25" in _printed(chain / "book" / "executed" / "b.ipynb")

    (chain / "params" / "cpu" / "b.yaml").write_text("y: 7\n")
    study.run_all("cpu", root=chain, progress=False)
    after_b = _run_ids(chain)
    assert after_b["a"] == new["a"] and after_b["b"] != new["b"]

    study.run_notebook("a", "cpu", root=chain, force=True, progress=False)
    table = study.status("cpu", chain)
    assert table.loc["b", "state"] == "stale" and table.loc["b", "changed"] == "upstream:a"
    study.run_all("cpu", root=chain, progress=False)
    assert _run_ids(chain)["b"] != after_b["b"]

    (chain / "notebooks" / "b.md").write_text(B + "\n<!-- edited -->\n")
    row = study.status("cpu", chain).loc["b"]
    assert (row["state"], row["changed"]) == ("stale", "source")
    assert row["message"] == ("notebooks/b.md edited without re-running it: "
                              "run `layerif run b --profile cpu`")
    monkeypatch.setenv("LAYERIF_ROOT", str(chain))
    assert cli.main(["status"]) == 1
    study.run_all("cpu", root=chain, progress=False)
    assert cli.main(["status"]) == 0


def test_bad_or_missing_upstream(chain):
    (chain / "notebooks" / "b.md").write_text(B.replace("needs: [a]", "needs: [zz]"))
    with pytest.raises(ValueError, match=r"b.md layerif.needs=\['zz'\]"):
        study.run_all("cpu", root=chain, progress=False)
    a_needs_b = A.replace("---\n\n# a", "layerif:\n  needs: [b]\n---\n\n# a")
    (chain / "notebooks" / "a.md").write_text(a_needs_b)
    with pytest.raises(ValueError, match=r"a.md layerif.needs=\['b'\]"):
        study.needs_of("a", chain)
    (chain / "notebooks" / "a.md").write_text(A)
    (chain / "notebooks" / "b.md").write_text(B)
    with pytest.raises(FileNotFoundError, match=r"b needs \['a'\]"):
        study.run_notebook("b", "cpu", root=chain, progress=False)
    assert study.status("cpu", chain).loc["b", "state"] == "missing"


def test_record_and_provenance_note_exactly_once(root):
    assert _git(root, "init", "-q").returncode == 0
    _git(root, "add", ".")
    committed = _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    assert committed.returncode == 0
    head = _git(root, "rev-parse", "HEAD").stdout.strip()
    out = study.run_notebook("toy", "cpu", root=root, progress=False)
    (root / "untracked.txt").write_text("makes the tree dirty\n")
    study.run_notebook("toy", "cpu", root=root, force=True, progress=False)
    nb = nbformat.read(out, as_version=4)
    notes = [i for i, c in enumerate(nb.cells) if PROVENANCE_TAG in c.metadata.get("tags", [])]
    assert notes == [1] and nb.cells[0].source == "# toy"
    record = nb.metadata["layerif"]
    assert record["commit"] == head and record["dirty"] is True  # the outputs alone do not count
    assert f"`{head[:7]}` with uncommitted changes" in nb.cells[1].source
    assert "`cpu` profile" in nb.cells[1].source and record["started"][:10] in nb.cells[1].source
    assert set(record) >= {"digest", "profile", "params", "needs", "run_id", "layerif_version",
                           "started", "wall_s", "host"}
    (root / "untracked.txt").unlink()
    study.run_notebook("toy", "cpu", root=root, force=True, progress=False)
    assert _record(out)["dirty"] is False  # book/executed/ is an output, not a change


def test_failed_run_keeps_previous_notebook_marked_failed(root):
    from papermill.exceptions import PapermillExecutionError

    out = study.run_notebook("toy", "cpu", root=root, progress=False)
    before = out.read_bytes()
    with pytest.raises(PapermillExecutionError):
        study.run_notebook("toy", "cpu", params={"x": 99}, root=root, progress=False)
    assert out.read_bytes() == before
    folder = out.parent
    left = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert left == [".stamps/toy.failed.ipynb", ".stamps/toy.failed.json",
                    ".stamps/toy.stderr.txt", "toy.ipynb"]  # the kept run's stderr, out of the book
    row = study.status("cpu", root).loc["toy"]
    assert row["state"] == "failed" and "x=99 is the planted failure" in row["message"]
    # Same inputs as the kept notebook, yet it re-runs: a failed attempt is never skipped.
    study.run_notebook("toy", "cpu", root=root, progress=False)
    assert out.read_bytes() != before
    assert study.status("cpu", root).loc["toy", "state"] == "current"
    assert not (folder / ".stamps" / "toy.failed.json").exists()


def test_bad_names():
    with pytest.raises(ValueError, match="profile='laptop'"):
        study.load_params("toy", "laptop")
    with pytest.raises(ValueError, match="name='nope'"):
        study.run_notebook("nope", "cpu")


# ------------------------------------------------------------------ run with a params file
def test_params_file_run_goes_beside_the_profiles_own(root, monkeypatch, capsys):
    own = study.run_notebook("toy", "cpu", root=root, progress=False)
    before = own.read_bytes()
    override = root / "mine.yaml"
    override.write_text("x: 7\n")
    out = study.run_with_params("toy", "cpu", override, root=root, progress=False)
    assert out == study.params_dir("cpu", {"x": 7}, root) / "toy.ipynb"
    assert out.parent.parent == root / "results" / "cpu" / "with-params"
    assert "result 147 cpu" in _printed(out)
    assert _record(out)["params"] == {"x": 7, "profile": "cpu"}
    assert own.read_bytes() == before  # the profile's own run is untouched, and current
    assert study.status("cpu", root).loc["toy", "state"] == "current"
    first = out.stat().st_mtime_ns
    study.run_with_params("toy", "cpu", override, root=root, progress=False)
    assert out.stat().st_mtime_ns == first  # same override: skipped
    other = root / "other.yaml"
    other.write_text("x: 8\n")
    elsewhere = study.run_with_params("toy", "cpu", other, root=root, progress=False)
    assert elsewhere.parent != out.parent
    monkeypatch.setenv("LAYERIF_ROOT", str(root))
    assert cli.main(["run", "toy", "--profile", "cpu", "--params", str(override)]) == 0
    assert capsys.readouterr().out.strip() == (  # says it skipped (it printed the same before)
        f"skipped toy (current: same source, parameters and upstream runs; --force re-runs "
        f"it): {out}")
    assert cli.main(["run", "toy", "--profile", "cpu", "--params", str(override), "--force"]) == 0
    assert capsys.readouterr().out.strip() == f"ran toy: {out}"
    assert out.stat().st_mtime_ns != first
    for executed in (own, out, elsewhere):  # readable by all, not the temporary file's 0600
        assert executed.stat().st_mode & 0o777 == 0o644, executed


def test_params_file_errors_name_the_key_and_the_accepted_ones(root, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("x: 1\ny: 2\n")
    with pytest.raises(ValueError, match=r"bad.yaml' keys=\['y'\] is invalid: expected "
                                         r"parameters of toy: x \(the profile comes from"):
        study.run_with_params("toy", "cpu", bad, root=root, progress=False)
    bad.write_text("profile: paper\n")
    with pytest.raises(ValueError, match=r"keys=\['profile'\]"):
        study.run_with_params("toy", "cpu", bad, root=root, progress=False)
    for text in ("[1, 2]\n", "", "x: [1\n"):
        bad.write_text(text)
        with pytest.raises(ValueError, match="expected a YAML mapping of parameter names"):
            study.read_params_file(bad)
    with pytest.raises(FileNotFoundError, match="--params .*nothing.yaml' does not exist"):
        study.read_params_file(tmp_path / "nothing.yaml")
    assert not (root / "results").exists()  # nothing ran
    assert study.parameter_names("toy", root) == ["profile", "x"]


def test_params_file_run_reads_the_profiles_upstream(chain, tmp_path):
    override = tmp_path / "b.yaml"
    override.write_text("y: 100\n")
    with pytest.raises(FileNotFoundError, match=r"b needs \['a'\].*book/executed"):
        study.run_with_params("b", "cpu", override, root=chain, progress=False)
    study.run_notebook("a", "cpu", root=chain, progress=False)
    out = study.run_with_params("b", "cpu", override, root=chain, progress=False)
    assert "b sees 110" in _printed(out)
    assert _record(out)["needs"]["a"]["run_id"] == _run_ids(chain, ["a"])["a"]
    assert study.status("cpu", chain).loc["b", "state"] == "missing"  # not the profile's run


# ------------------------------------------------------------------ rendering
BOOK_CONFIG = """title: toy
only_build_toc_files: true
exclude_patterns: [_build, out]
execute:
  execute_notebooks: "off"
"""


def test_render_fails_on_a_warning_and_names_it(tmp_path):
    _write(tmp_path, {"_config.yml": BOOK_CONFIG, "_toc.yml": "format: jb-book\nroot: intro\n",
                      "intro.md": "# Intro\n\nSee {doc}`method`.\n", "method.md": "# Method\n"})
    warning = r"(?s)-W -n --keep-going.*\n[^\n]*intro.md:3: WARNING: unknown document: 'method'"
    with pytest.raises(RuntimeError, match=warning):
        study.render_book(tmp_path, tmp_path / "out")  # method.md is not in the toc
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n- file: method\n")
    index = study.render_book(tmp_path, tmp_path / "out")
    assert index == tmp_path / "out" / "_build" / "html" / "index.html"
    assert "Method" in (tmp_path / "out" / "_build" / "html" / "method.html").read_text()


TYPED = FRONT.format(extra="") + """
# typed

```{code-cell} ipython3
:tags: [parameters]

profile = "smoke"
models = ["smollm2-135m"]
sizes = [0.3, 0.5]
n_examples = 4
rate = 0.5
quick = False
prune = {"n_samples": 4}
later = None
computed = 2 * 3
```

```{code-cell} ipython3
raise AssertionError("never runs in these tests")
```
"""


@pytest.mark.parametrize("text, key, expected", [
    ("models: smollm2-135m\n", "models", "a list like the default ['smollm2-135m']"),
    ("models: [1, 2]\n", "models", "a list like the default ['smollm2-135m']"),
    ("sizes: [0.2, low]\n", "sizes", "a list like the default [0.3, 0.5]"),
    ("n_examples: '20'\n", "n_examples", "an int like the default 4"),
    ("n_examples: 20.5\n", "n_examples", "an int like the default 4"),
    ("n_examples: true\n", "n_examples", "an int like the default 4"),
    ("quick: 1\n", "quick", "a bool like the default False"),
    ("prune: [4, 64]\n", "prune", "a mapping like the default {'n_samples': 4}"),
    ("later: 3\nmodels: x\n", "models", "a list"),  # None takes anything; models is next
])
def test_params_file_values_are_type_checked_before_running(tmp_path, text, key, expected):
    # Before: `models: smollm2-135m` ran the notebook (90 s on 05) and failed per character.
    root = _write(tmp_path, {"notebooks/typed.md": TYPED, "params/cpu/typed.yaml": "rate: 0.4\n"})
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ValueError, match=rf"bad.yaml': {key}=.* is invalid: expected "
                                         rf"{re.escape(expected)}"):
        study.run_with_params("typed", "cpu", bad, root=root, progress=False)
    assert not (root / "results").exists()  # nothing ran


def test_params_file_values_of_the_right_type_pass_the_check(tmp_path):
    root = _write(tmp_path, {"notebooks/typed.md": TYPED})
    good = {"models": ["a", "b"], "sizes": [1, 0.25], "n_examples": 20, "rate": 1,
            "quick": True, "prune": {"seq_len": 8}, "later": [1], "computed": "anything"}
    study.check_param_types("typed", "cpu", good, "--params", root)  # no error
    # null switches a parameter off (recipe_search: null, n_examples: null): never a type error
    study.check_param_types("typed", "cpu", {"prune": None, "n_examples": None}, "--params", root)
    assert study.parameter_defaults("typed", root) == {
        "profile": "smoke", "models": ["smollm2-135m"], "sizes": [0.3, 0.5], "n_examples": 4,
        "rate": 0.5, "quick": False, "prune": {"n_samples": 4}, "later": None}


# c computes one result through the store and loads another saved before it ran.
C = FRONT.format(extra="") + """
# c

```{code-cell} ipython3
:tags: [parameters]

profile = "smoke"
```

```{code-cell} ipython3
import pandas as pd
from layerif import store
ident = store.identity("toy", {}, None, {"n": 1})
base = store.results_dir(profile, "..")
store.cached(base / "old", ident, lambda: 1 / 0)        # saved before: loaded, never computed
store.cached(base / "new", ident, lambda: pd.DataFrame({"v": [1.0]}))
store.cached(base / "new", ident, lambda: 1 / 0)        # a second use of the same result
```
"""


def test_the_record_lists_the_results_a_run_used_and_their_cold_cost(tmp_path):
    from layerif import store
    root = _write(tmp_path, {"notebooks/c.md": C, "params/cpu/c.yaml": "{}\n"})
    ident = store.identity("toy", {}, None, {"n": 1})
    store.save_frame(store.results_dir("cpu", root) / "old", __import__("pandas").DataFrame({"v": [2.0]}),
                     ident, extra={"prune_seconds": 30.0, "eval_seconds": 12.5})
    record = _record(study.run_notebook("c", "cpu", root=root, progress=False))
    old, new = record["results"]["results/cpu/old"], record["results"]["results/cpu/new"]
    assert old == {"seconds": 42.5, "computed": False}
    assert new["computed"] is True and 0 <= new["seconds"] < 30   # measured by store.cached
    saved = store.load_manifest(store.results_dir("cpu", root) / "new")["extra"]
    assert saved == {"compute_seconds": new["seconds"]}
    assert record["cold"] == {"cold_s": round(42.5 + new["seconds"], 1), "results": 2,
                              "computed": 1, "untimed": 0}
    assert not list((root / "book" / "executed").rglob("*.jsonl"))  # the log is not left behind
