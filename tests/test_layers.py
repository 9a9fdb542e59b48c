"""The layers import one way, downwards, and the project installs: parsed
from the source with ``ast``, so a back-edge added tomorrow fails here."""

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Bottom up. A module may import its own package and any lower layer; packages
# of one layer do not import each other.
LAYERS = {
    "core": 0,
    "datasets": 1, "models": 1,
    "inference": 2,
    "training": 3, "serving": 3,
    "workflows": 4,
    "train": 5, "predict": 5, "serve": 5,
    "scripts": 6,
}
SCRIPTS = sorted((REPO / "scripts").glob("*.py"))


def project_modules() -> list[Path]:
    files = [REPO / "train.py", REPO / "predict.py", REPO / "serve.py", *SCRIPTS]
    for package in LAYERS:
        if (REPO / package).is_dir() and package != "scripts":
            files += sorted((REPO / package).glob("*.py"))
    return files


def layer_of(path: Path, root: Path = REPO) -> str:
    relative = path.relative_to(root)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def imported_projects(path: Path, root: Path = REPO) -> list[tuple[int, str, bool]]:
    """(line, top-level project name, inside a function) of each import of a
    project package in ``path``; relative imports name the file's own package."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                names = [alias.name.split(".")[0] for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                names = [layer_of(path, root)] if child.level else [(child.module or "").split(".")[0]]
            else:
                visit(child, nested)
                continue
            found.extend((child.lineno, name, in_function) for name in names if name in LAYERS)

    visit(tree, False)
    return found


def test_every_project_file_belongs_to_a_layer():
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")}
    assert packages - {"tests"} <= set(LAYERS), f"a package with no layer: {packages - set(LAYERS)}"
    assert len(project_modules()) > 50


def test_imports_point_down_the_layers():
    back_edges = []
    for path in project_modules():
        mine = layer_of(path)
        for line, name, _ in imported_projects(path):
            if name != mine and LAYERS[name] >= LAYERS[mine]:
                back_edges.append(f"{path.relative_to(REPO)}:{line} ({mine}, layer {LAYERS[mine]}) imports "
                                  f"{name} (layer {LAYERS[name]})")
    assert not back_edges, "\n".join(back_edges)


def test_no_project_import_hides_inside_a_function():
    hidden = [f"{path.relative_to(REPO)}:{line} imports {name}" for path in project_modules()
              for line, name, in_function in imported_projects(path) if in_function]
    assert not hidden, "\n".join(hidden)


def test_the_checker_sees_a_back_edge(tmp_path):
    """The parser itself: a lower layer importing a higher one is caught,
    at top level and inside a function."""
    package = tmp_path / "core"
    package.mkdir()
    module = package / "bad.py"
    module.write_text("from training.trainer import Trainer\nfrom . import files\n\ndef f():\n    import workflows\n")
    assert imported_projects(module, tmp_path) == [(1, "training", False), (2, "core", False), (5, "workflows", True)]


def test_no_script_edits_sys_path():
    offenders = [str(p.relative_to(REPO)) for p in project_modules() if "sys.path" in p.read_text()]
    assert not offenders


RUN_HELP = """
import runpy, sys
failed = []
for path in sys.argv[1:]:
    sys.argv, sys.path[0] = [path, "--help"], path.rsplit("/", 1)[0]  # as `python path --help` sets them
    try:
        runpy.run_path(path, run_name="__main__")
        failed.append(f"{path}: --help did not exit")
    except SystemExit as exit:
        if exit.code not in (0, None):
            failed.append(f"{path}: exit {exit.code}")
    except Exception as error:
        failed.append(f"{path}: {type(error).__name__}: {error}")
print("FAILED" if failed else "OK", *failed, sep="\\n")
"""


def test_every_script_runs_from_any_working_directory(tmp_path):
    """``--help`` of every script and entry point from an unrelated folder,
    in one process: the project is installed (``pip install -e .``), so none
    needs the repository on sys.path."""
    paths = [str(p) for p in (*SCRIPTS, REPO / "train.py", REPO / "predict.py", REPO / "serve.py")]
    run = subprocess.run([sys.executable, "-c", RUN_HELP, *paths], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "FAILED" not in run.stdout, run.stdout[-3000:]
    assert run.stdout.count("usage:") == len(paths), run.stdout[-3000:]
