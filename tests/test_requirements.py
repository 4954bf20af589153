"""The timm version check at import: one line naming the version needed."""
import subprocess
import sys

import pytest

from timm_pss.requirements import MIN_TIMM_VERSION, check_timm_version, version_tuple


def test_version_tuple():
    assert version_tuple('1.0.31') == (1, 0, 31)
    assert version_tuple('1.0.29.dev0') == (1, 0, 29)
    assert version_tuple('2.14.1+cu130') == (2, 14, 1)
    with pytest.raises(ValueError, match='not a version number'):
        version_tuple('latest')


@pytest.mark.parametrize('installed', [MIN_TIMM_VERSION, '1.0.32', '1.1.0', '2.0.0.dev3', '1.0.31.post1',
                                       '1.0.31+local'])
def test_new_enough_timm_passes(installed):
    check_timm_version(installed)


@pytest.mark.parametrize('installed', ['1.0.15', '1.0.30', '0.9.16', '1.0.31.dev0', '1.0.31rc1'])
def test_old_timm_is_refused_in_one_line(installed):
    with pytest.raises(ImportError) as info:
        check_timm_version(installed)
    message = str(info.value)
    assert '\n' not in message
    assert message == (f"timm_pss needs timm >= {MIN_TIMM_VERSION}, found timm {installed}: "
                       f"pip install --upgrade 'timm>={MIN_TIMM_VERSION}'")


def test_import_refuses_an_old_timm():
    """`import timm_pss` under a timm that reports an old version fails before anything else is imported."""
    code = "import timm; timm.__version__ = '1.0.20'; import timm_pss"
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"ImportError: timm_pss needs timm >= {MIN_TIMM_VERSION}, found timm 1.0.20: "
        f"pip install --upgrade 'timm>={MIN_TIMM_VERSION}'")
