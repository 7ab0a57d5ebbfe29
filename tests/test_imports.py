"""No module of convlstm_jax imports another that imports it back, counting imports inside functions."""

from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'convlstm_jax'


def import_graph(package: pathlib.Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the package's modules it imports anywhere in its text (parent packages left out: they load
    first in any case)."""
    modules = {}
    for path in sorted(package.rglob('*.py')):
        parts = list(path.relative_to(package.parent).with_suffix('').parts)
        modules['.'.join(parts[:-1] if parts[-1] == '__init__' else parts)] = path

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition('.')[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        graph[module] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [
                    f'{node.module}.{alias.name}' for alias in node.names
                ]  # a submodule, or a name in one
            else:
                continue
            for name in names:
                target = resolve(name) if name.startswith(package.name) else None
                if target and target != module and not module.startswith(f'{target}.'):
                    graph[module].add(target)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in graph[module]:
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while not component or component[-1] != module:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for module in graph:
        if module not in index:
            visit(module)
    return found


def test_no_import_circles() -> None:
    graph = import_graph()
    assert (
        'convlstm_jax.evaluate.core' in graph and 'convlstm_jax.plotting' in graph['convlstm_jax.visualize']
    )
    assert circles(graph) == []


def test_circles_are_found(tmp_path: pathlib.Path) -> None:
    package = tmp_path / 'convlstm_jax'
    (package / 'sub').mkdir(parents=True)
    (package / '__init__.py').write_text('')
    (package / 'sub' / '__init__.py').write_text('from convlstm_jax.sub.b import x\n')
    (package / 'sub' / 'b.py').write_text('x = 1\n')
    (package / 'a.py').write_text('def f():\n    from convlstm_jax import c\n')
    (package / 'c.py').write_text('import convlstm_jax.a\nfrom convlstm_jax.sub import b\n')
    graph = import_graph(package)
    assert graph['convlstm_jax.sub.b'] == set()  # its own package is not a circle
    assert circles(graph) == [['convlstm_jax.a', 'convlstm_jax.c']]


def test_evaluation_stays_out_of_visualize_and_predict() -> None:
    graph = import_graph()
    for command in ('convlstm_jax.visualize', 'convlstm_jax.predict', 'convlstm_jax.plotting'):
        assert not {m for m in graph[command] if m.startswith('convlstm_jax.evaluate')}, command
    assert 'convlstm_jax.train' not in graph['convlstm_jax.predict']
    assert not {m for m in graph['convlstm_jax.inference'] if m.startswith('convlstm_jax.evaluate')}
    assert 'convlstm_jax.train' not in graph['convlstm_jax.inference']
