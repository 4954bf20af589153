"""The front door and the docs: every relative link resolves, and the Python blocks users paste run as written."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from support import SUBPROCESS_TIMEOUT

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / 'README.md', ROOT / 'benchmarks' / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]
LINK = re.compile(r'\]\(([^)\s]+)\)')
FENCE = re.compile(r'^```.*?^```', re.S | re.M)


def _anchors(markdown: str) -> set:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    return {re.sub(r'[^\w\- ]', '', h.strip().lower()).replace(' ', '-')
            for h in re.findall(r'^#+ (.*)$', FENCE.sub('', markdown), re.M)}


@pytest.mark.parametrize('doc', DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc):
    text = FENCE.sub('', doc.read_text(encoding='utf-8'))
    for target in LINK.findall(text):
        if re.match(r'^[a-z]+:', target):
            continue
        path, _, anchor = target.partition('#')
        file = (doc.parent / path).resolve() if path else doc
        assert file.exists(), f'{doc.relative_to(ROOT)}: link to {target} points at nothing'
        if anchor and file.suffix == '.md':
            assert anchor in _anchors(file.read_text(encoding='utf-8')), f'{doc.relative_to(ROOT)}: no #{anchor} in {path}'


def test_readme_stays_a_front_door():
    assert len((ROOT / 'README.md').read_text(encoding='utf-8').splitlines()) <= 200


@pytest.mark.parametrize('doc', ['README.md', 'docs/quickstart.md'])
def test_python_blocks_run_as_pasted(doc, tmp_path):
    blocks = re.findall(r'^```python\n(.*?)^```', (ROOT / doc).read_text(encoding='utf-8'), re.S | re.M)
    assert blocks
    proc = subprocess.run([sys.executable, '-c', '\n'.join(blocks)], capture_output=True, text=True, cwd=tmp_path,
                          timeout=SUBPROCESS_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
