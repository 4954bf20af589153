"""What pip installs besides the library: console scripts for training and the tools, and the license."""
from importlib.metadata import distribution

import timm_pss.convert_reference
import timm_pss.latency
import timm_pss.publish
import timm_pss.train


def test_console_scripts_point_at_the_command_line_entry_points():
    scripts = {ep.name: ep for ep in distribution('timm-pss').entry_points if ep.group == 'console_scripts'}
    assert scripts['train-pss'].load() is timm_pss.train.main
    assert scripts['timm-pss-publish'].load() is timm_pss.publish.main
    assert scripts['timm-pss-latency'].load() is timm_pss.latency.main
    assert scripts['timm-pss-convert-reference'].load() is timm_pss.convert_reference.main


def test_metadata_names_an_spdx_license_and_the_timm_pin():
    meta = distribution('timm-pss').metadata
    assert meta['License-Expression'] == 'Apache-2.0'
    requires = meta.get_all('Requires-Dist')
    assert any(r.replace(' ', '').startswith('timm>=1.0.31') for r in requires)
    assert not any(r.startswith('fvcore') and 'extra' not in r for r in requires)  # a test-only cross-check
