"""Package structure: no import cycles between jax_flashllm's modules, and `import jax_flashllm` loads
neither flax, safetensors nor tqdm (layers, models and generation load them on first use)."""

import ast
import os
import subprocess
import sys

import jax_flashllm

PACKAGE = os.path.dirname(jax_flashllm.__file__)


def _module(path: str) -> str:
    rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
    return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def _imports(path: str, name: str, modules: set[str]) -> set[str]:
    """Every jax_flashllm module `path` imports, at the top or inside a function."""
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
            # `from pkg import submodule` depends on the submodule (a package's __init__ importing its own
            # submodules is the normal pattern, not a cycle); `from module import name` on the module.
            subs = {f"{base}.{a.name}" for a in node.names} & modules
            found.update(subs if len(subs) == len(node.names) else subs | {base})
    return {m for m in found if m in modules and m != name}


def test_no_import_cycles():
    paths = [os.path.join(d, f) for d, _, files in os.walk(PACKAGE) for f in files if f.endswith(".py")]
    modules = {_module(p) for p in paths}
    # The package __init__ re-exports everything; cycles through it are the normal Python pattern.
    graph = {_module(p): _imports(p, _module(p), modules) - {"jax_flashllm"} for p in paths}
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for n in graph[m]:
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


def test_import_is_light():
    code = ("import sys, jax_flashllm; heavy = [m for m in ('flax', 'safetensors', 'tqdm') if m in sys.modules];"
            "print(heavy); jax_flashllm.generate; jax_flashllm.nn; print('flax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.path.dirname(PACKAGE)}).stdout.split("\n")
    assert out[0] == "[]" and out[1] == "True", out
