"""The core is pure: it imports none of Prefect, MLflow or DVC and reads no environment."""

import ast
import subprocess
import sys

from conftest import REPO_ROOT

FORBIDDEN = {"prefect", "prefect_dask", "mlflow", "dvc"}
NOT_IMPORTED_BY_CORE = FORBIDDEN | {"yaml"}  # params.yaml is read at the edge (tasks.workspace)


def core_files():
    return sorted((REPO_ROOT / "unlearnflow").rglob("*.py"))


def test_core_sources_import_no_orchestration_or_tracking():
    offenders = []
    for path in core_files():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in NOT_IMPORTED_BY_CORE]
    assert offenders == []


def test_core_reads_no_environment_variables():
    hits = [p.name for p in core_files() if "os.environ" in p.read_text() or "getenv" in p.read_text()]
    assert hits == []


def test_importing_the_whole_core_loads_none_of_them():
    code = (
        "import sys, pkgutil, importlib, unlearnflow\n"
        "for m in pkgutil.walk_packages(unlearnflow.__path__, 'unlearnflow.'): importlib.import_module(m.name)\n"
        f"print(sorted({{n.split('.')[0] for n in sys.modules}} & set({sorted(FORBIDDEN)!r})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
