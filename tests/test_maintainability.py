"""Promises about the code itself, checked like any other: the orchestration layer stays
thin enough to read (no function in flows/ or tasks/ over 60 lines)."""

import ast

from conftest import REPO_ROOT

LIMIT = 60


def long_functions(root=REPO_ROOT, folders=("flows", "tasks"), limit=LIMIT) -> list[str]:
    found = []
    for folder in folders:
        for path in sorted((root / folder).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > limit:
                        found.append(f"{folder}/{path.name}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_in_flows_or_tasks_is_longer_than_60_lines():
    assert long_functions() == []


def test_the_count_finds_a_function_one_line_too_long(tmp_path):
    (tmp_path / "tasks").mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(LIMIT))  # with its def line: LIMIT + 1 lines
    (tmp_path / "tasks" / "long.py").write_text(f"def too_long():\n{body}\n\n\ndef fine():\n    pass\n")
    assert long_functions(tmp_path) == [f"tasks/long.py:1 too_long ({LIMIT + 1} lines)"]


def test_the_readme_method_table_is_what_the_registry_generates():
    from flows.report import methods_markdown
    from unlearnflow.unlearning import method_rows

    assert methods_markdown(method_rows()) in (REPO_ROOT / "README.md").read_text()
