"""The tree's boundaries, read from the source: the import graph and who opens files under conf/.

The import graph is built from the AST of every module of planner/, runner/ and shardwise/, counting imports
inside functions and string arguments to importlib.import_module / __import__, so a boundary
cannot be hidden by importing lazily or by name.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("planner", "runner", "shardwise")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def imported_names(path: Path, package: str) -> set[str]:
    """Every module name `path` imports: statements anywhere in the file and importlib calls with a literal name."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            found.add(stem)
            found.update(f"{stem}.{alias.name}" for alias in node.names)  # `from pkg import module`
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.add(node.args[0].value)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of planner/, runner/ and shardwise/ it imports (names that are not modules are dropped)."""
    modules = all_modules()
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = {n for n in imported_names(path, package) if n in modules and n != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def test_the_graph_sees_lazy_and_importlib_imports():
    """The scanner itself: a function-level import and an importlib string are both edges."""
    graph = import_graph()
    assert "planner.config.request" in graph["planner.config.compose"]  # imported inside make_plan
    assert "planner.driver.planning" in graph["planner.config.request"]  # imported inside plan_from_config
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_planner_never_imports_runner():
    graph = import_graph()
    crossing = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        if module.split(".")[0] == "planner"
        for target in targets
        if target.split(".")[0] == "runner"
    )
    assert crossing == []


def test_the_verbs_sit_above_both_packages():
    """shardwise/ (the verbs, their Hydra app, the dispatcher) imports planner and runner, never the reverse; the
    one exception is `python -m runner`, a program entry kept for old scripts that hands over to the dispatcher."""
    graph = import_graph()
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        if module.split(".")[0] in ("planner", "runner") and module != "runner.__main__"
        for target in targets
        if target.split(".")[0] == "shardwise"
    )
    assert upward == []
    verbs = {m.rpartition(".")[2] for m in graph if m.startswith("shardwise.verbs.")} - {"app"}
    from shardwise.cli import VERBS

    assert verbs == set(VERBS)  # one module per verb, named after it


def test_planner_modules_import_no_cycle():
    graph = import_graph()
    planner_only = {m: {t for t in ts if t.startswith("planner")} for m, ts in graph.items() if m.startswith("planner")}
    assert find_cycle(planner_only) is None


def test_the_planner_core_does_not_import_the_config_layer():
    """planner/config hands the core a typed request; the core never reaches back into planner/config."""
    graph = import_graph()
    core = [
        "planner.driver.planning",
        "planner.place.sizing",
        "planner.driver.sessions",
        "planner.place.search",
        "planner.explain.prose",
        "planner.driver.fixes",
        "planner.driver.fallbacks",
    ]
    core += ["planner.decide.policy", "planner.place.placement", "planner.memory.terms", "planner.decide.decisions"]
    reaching = sorted(f"{m} -> {t}" for m in core for t in graph[m] if t.startswith("planner.config"))
    assert reaching == []


# A path under conf/: the config tree's finder, or a "conf" path component in a string literal.
CONF_USE = re.compile(r"""conf_dir\(|["']conf["']|["']conf/|/\s*["']conf\b""")


def test_only_planner_config_opens_paths_under_conf():
    offenders = []
    for folder in ("planner", "runner", "shardwise", "benchmarks"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if path.is_relative_to(REPO / "planner" / "config"):
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if CONF_USE.search(line):
                    offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert offenders == []


def test_the_conf_scan_catches_the_ways_a_path_is_built():
    for line in ('conf_dir() / "model"', 'REPO / "conf"', 'Path("conf/model/gpt2.yaml")', "root / 'conf' / x"):
        assert CONF_USE.search(line), line
    for line in ("config = load()", "conf = cfg", '"configs"', "from planner.config.reader import read_option"):
        assert not CONF_USE.search(line), line


def test_the_api_is_importable_under_the_product_name_without_loading_torch():
    """`from shardwise import OpenAIChat, create_chat_completion` gives runner's objects; torch loads on first use."""
    import subprocess
    import sys

    code = (
        "import sys; import runner.api as api; import shardwise as s; "
        "from shardwise import OpenAIChat, create_chat_completion, ShardwiseError, make_plan; "
        "from planner.errors import ShardwiseError as E; "
        "assert OpenAIChat is api.OpenAIChat and create_chat_completion is api.create_chat_completion; "
        "assert ShardwiseError is E and callable(make_plan); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"
