"""Imports point down (issue 21): no engine module imports the study wing or the package
root, evaluation does not import pruning, data does not import models, and the notebook
runner's record reads the version and the git state without loading torch."""
import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "layerif"
STUDY_WING = ("layerif.study", "layerif.cli", "layerif.dry_run", "layerif.experiments")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, name: str | None = None) -> set[str]:
    """Every module a file (module ``name``, default: its place in the package) imports, as
    absolute dotted names: ``from X import y`` gives ``X.y`` when ``y`` is a submodule of X,
    else ``X`` (``layerif:y`` for a name of the package root itself)."""
    name = name or module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                if _is_module(sub):
                    found.add(sub)  # a submodule, reached through its package
                else:
                    found.add(f"layerif:{a.name}" if base == "layerif" else base)
    return found


def _is_module(dotted: str) -> bool:
    parts = dotted.split(".")
    if parts[0] != "layerif":
        return False
    path = PACKAGE.parent.joinpath(*parts)
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def modules(under: str = "") -> list[Path]:
    return sorted((PACKAGE / under).rglob("*.py"))


def engine_modules() -> list[Path]:
    wing = {PACKAGE / f for f in ("study.py", "cli.py", "dry_run.py", "__init__.py")}
    return [p for p in modules() if p not in wing and "experiments" not in p.parts
            and "bench" not in p.parts]


def test_engine_modules_import_neither_the_study_wing_nor_the_package_root():
    offenders = []
    for path in engine_modules():
        for target in imported(path):
            if target.startswith(STUDY_WING) or target.startswith("layerif:") or target == "layerif":
                offenders.append(f"{module_name(path)} imports {target}")
    assert offenders == []


@pytest.mark.parametrize("lower, upper", [("evaluate", "layerif.prune"),
                                          ("data", "layerif.models")])
def test_lower_packages_do_not_import_upper_ones(lower, upper):
    offenders = [f"{module_name(p)} imports {t}" for p in modules(lower) for t in imported(p)
                 if t == upper or t.startswith(upper + ".")]
    assert offenders == []


def test_the_resolver_sees_the_imports_it_must_forbid(tmp_path):
    # the checks above are only as good as the resolver
    fake = tmp_path / "fake.py"
    fake.write_text("import layerif\nfrom .. import __version__, store\n"
                    "from ..study import results_dir\nfrom ..experiments.verdict import Verdict\n"
                    "from ..prune import evaluate_pruned\n")
    assert imported(fake, "layerif.evaluate.fake") == {
        "layerif", "layerif:__version__", "layerif.store", "layerif.study",
        "layerif.experiments.verdict", "layerif.prune"}
    probe = PACKAGE / "evaluate" / "run.py"
    assert "layerif.store" in imported(probe) and "layerif.evaluate.suite" in imported(probe)
    assert "layerif.evaluate.run" in imported(PACKAGE / "prune" / "run.py")
    assert "layerif.notebook_record" in imported(PACKAGE / "study.py")


def test_notebook_record_loads_neither_torch_nor_transformers():
    code = ("import layerif.notebook_record, sys; "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.split() == ["False", "False"]


def test_one_git_state_for_records_and_manifests(tmp_path):
    from layerif import gitstate, notebook_record, store

    assert notebook_record.git_state is gitstate.git_state
    assert "git_state" not in vars(store) or store.git_state is gitstate.git_state
    if subprocess.run(["git", "init", "-q", str(tmp_path)], capture_output=True).returncode:
        pytest.skip("git is not available")
    (tmp_path / "a.txt").write_text("a")
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "x"], check=True)
    head = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert gitstate.git_state(tmp_path) == {"commit": head, "dirty": False}
    (tmp_path / "results" / "cpu").mkdir(parents=True)
    (tmp_path / "results" / "cpu" / "r.csv").write_text("an output")
    assert gitstate.git_state(tmp_path)["dirty"] is False  # outputs do not count
    (tmp_path / "new.py").write_text("untracked")
    assert gitstate.git_state(tmp_path)["dirty"] is True  # untracked files do
    assert gitstate.git_state(tmp_path.parent / "nowhere-else") is None


def test_compatibility_shims_are_gone():
    assert importlib.util.find_spec("layerif.provenance") is None
