"""The package's rooms: no module imports another module's private (`_x`) names, and `__all__` lists only what a
module defines or imports."""
import ast
import importlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / 'timm_pss'


def _modules():
    for path in sorted(PACKAGE.rglob('*.py')):
        parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
        yield path, '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def test_no_module_imports_a_private_name_of_another_timm_pss_module():
    crossings = []
    for path, name in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or '').startswith('timm_pss')):
                crossings += [f'{name}: {node.module} {a.name}' for a in node.names
                              if a.name.startswith('_') and not a.name.startswith('__')]
    assert crossings == []


def test_every_all_names_only_what_its_module_has():
    stale = []
    for _, name in _modules():
        if name.endswith('__main__'):
            continue
        module = importlib.import_module(name)
        stale += [f'{name}.{n}' for n in getattr(module, '__all__', ()) if not hasattr(module, n)]
    assert stale == []
