"""Hub I/O offline: publish folders, a real Hugging Face cache layout, registry tags, hf-hub:, local-dir:, torch.hub."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import timm
import yaml
from timm.models import save_for_hf
from torch.utils.data import DataLoader, TensorDataset

import timm_pss
import timm_pss.publish
import timm_pss.runs
from support import outputs_per_budget
from timm_pss.publish import main as publish_main
from support import SUBPROCESS_TIMEOUT

ROOT = Path(__file__).resolve().parents[1]
REPO = 'timm-pss/pss_mobilenetv2.pss_in1k'


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    """A finished run folder as train_pss.py writes it: a 1000-class pss_mobilenetv2 with a 3-entry table."""
    torch.manual_seed(0)
    model = timm.create_model('pss_mobilenetv2').eval()
    loader = DataLoader(TensorDataset(torch.randn(8, 3, 128, 128), torch.zeros(8, dtype=torch.long)), batch_size=8)
    space = model.space
    subnets = [space.min_subnet(), space.sample(rng=0, flops_range=(150e6, 200e6)), space.max_subnet()]
    timm_pss.fill_budget_table(model, subnets, loader, num_batches=1)
    model.set_table_metrics([{'top1': 61.25, 'top5': 80.5}, {'top1': 66.75, 'top5': 85.0},
                              {'top1': 71.5, 'top5': 90.25}])
    run = tmp_path_factory.mktemp('run')
    save_for_hf(model, str(run), safe_serialization=True)
    (run / 'args.yaml').write_text(yaml.safe_dump({'model': 'pss_mobilenetv2', 'epochs': 3, 'pss_pool_size': 50}))
    shutil.copyfile(ROOT / 'tests' / 'data' / 'plot.png', run / 'accuracy_vs_flops.png')
    return run


@pytest.fixture(scope='module')
def published(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp('hub') / 'folder'
    assert publish_main([str(run_dir), '--repo-id', REPO, '--dry-run', str(out)]) == 0
    return out


def test_publish_folder_contents(published, run_dir):
    names = {p.name for p in published.iterdir()}
    assert {'config.json', 'model.safetensors', 'README.md', 'accuracy_vs_flops.png', 'training_args.yaml'} <= names
    config = json.loads((published / 'config.json').read_text())
    assert config['architecture'] == 'pss_mobilenetv2'
    assert config['pretrained_cfg']['input_size'] == [3, 224, 224]  # the max subnet's resolution
    assert 'model_args' in config
    card = (published / 'README.md').read_text()
    assert card.startswith('---\n') and f'# Model card for {REPO}' in card and '${' not in card
    assert '71.50' in card and '66.75' in card and '61.25' in card  # the measured table, as measured
    assert 'hf-hub:' + REPO in card and 'pss_pool_size: 50' in card and 'accuracy_vs_flops.png' in card


def test_local_dir_round_trip(published, run_dir):
    x = torch.randn(2, 3, 160, 160)
    original = timm.create_model(f'local-dir:{run_dir}', pretrained=True).eval()
    loaded = timm.create_model(f'local-dir:{published}', pretrained=True).eval()
    assert loaded.budget_table == original.budget_table and len(loaded.budget_table) == 3
    for a, b in zip(outputs_per_budget(original, x), outputs_per_budget(loaded, x)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _hf_cache(cache: Path, repo_id: str, folder: Path) -> None:
    """The layout huggingface_hub keeps: models--ORG--NAME/{refs/main, snapshots/<sha>/...}."""
    sha = '0123456789abcdef0123456789abcdef01234567'
    repo = cache / ('models--' + repo_id.replace('/', '--'))
    (repo / 'refs').mkdir(parents=True)
    (repo / 'refs' / 'main').write_text(sha)
    shutil.copytree(folder, repo / 'snapshots' / sha)


LOAD_SCRIPT = r'''
import json, sys, torch, timm, timm_pss
cache, out = sys.argv[1], sys.argv[2]
x = torch.load(sys.argv[3])
res = {}
def outputs(m):
    m.eval()
    ys = []
    for e in m.budget_table:
        m.set_budget(e.flops)
        with torch.no_grad():
            ys.append(m(x).tolist())
    return ys
res['hf_hub'] = outputs(timm.create_model('hf-hub:%s' % sys.argv[4], pretrained=True, cache_dir=cache))
res['tag'] = outputs(timm.create_model('pss_mobilenetv2.pss_in1k', pretrained=True, cache_dir=cache))
m = timm.create_model('pss_mobilenetv2.pss_in1k', pretrained=True, cache_dir=cache, num_classes=10, in_chans=1)
res['new_head'] = [len(m.budget_table), m.num_classes, list(m.conv_stem.weight.shape),
                   [e.flops == m.space.flops(e.subnet) for e in m.budget_table]]
try:
    timm.create_model('pss_resnet50.pss_in1k', pretrained=True, cache_dir=cache)
except RuntimeError as e:
    res['missing'] = str(e)
json.dump(res, open(out, 'w'))
'''


def test_offline_hf_cache_registry_tag_and_hf_hub(published, tmp_path):
    cache = tmp_path / 'cache'
    _hf_cache(cache, REPO, published)
    x = torch.randn(2, 3, 224, 224)
    torch.save(x, tmp_path / 'x.pt')
    # the same torch thread count as this process: outputs are compared bit for bit
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_HOME=str(tmp_path / 'hf_home'),
               OMP_NUM_THREADS=str(torch.get_num_threads()))
    proc = subprocess.run([sys.executable, '-c', LOAD_SCRIPT, str(cache), str(tmp_path / 'res.json'),
                           str(tmp_path / 'x.pt'), REPO], capture_output=True, text=True, env=env,
                          timeout=SUBPROCESS_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / 'res.json').read_text())
    reference = timm.create_model(f'local-dir:{published}', pretrained=True).eval()
    expected = [y.tolist() for y in outputs_per_budget(reference, x)]
    for key in ('hf_hub', 'tag'):
        assert len(res[key]) == 3
        for got, want in zip(res[key], expected):
            torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=0, atol=0)
    # timm's num_classes / in_chans adaptation: new head, 1-channel stem, the table kept with FLOPs recounted
    assert res['new_head'] == [3, 10, [32, 1, 3, 3], [True, True, True]]
    # a repo that is not there: the error names it and says how to load local weights
    assert 'timm-pss/pss_resnet50.pss_in1k' in res['missing'] and 'pretrained_cfg_overlay' in res['missing']


def test_publish_uploads_through_huggingface_hub(run_dir, monkeypatch):
    import huggingface_hub
    calls = {}

    class Repo:
        repo_id = 'someone/pss'

    class Commit:
        commit_url = 'https://huggingface.co/someone/pss/commit/abc'

    def create_repo(self, repo_id, private=False, exist_ok=False, **kw):
        calls['create'] = dict(repo_id=repo_id, private=private, exist_ok=exist_ok)
        return Repo()

    def upload_folder(self, repo_id, folder_path, commit_message=None, **kw):
        calls['upload'] = dict(repo_id=repo_id, files=sorted(p.name for p in Path(folder_path).iterdir()),
                               message=commit_message)
        return Commit()

    monkeypatch.setattr(huggingface_hub.HfApi, 'create_repo', create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, 'upload_folder', upload_folder)
    monkeypatch.setattr(huggingface_hub.HfApi, 'file_exists', lambda self, repo_id, filename, **kw: False)
    url = timm_pss.publish.publish(run_dir, 'someone/pss', private=True)
    assert url == Commit.commit_url
    assert calls['create'] == dict(repo_id='someone/pss', private=True, exist_ok=True)
    assert calls['upload']['repo_id'] == 'someone/pss'
    assert {'config.json', 'model.safetensors', 'README.md'} <= set(calls['upload']['files'])


def test_publish_refuses_bad_input(run_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        publish_main([str(run_dir), '--repo-id', 'no-slash', '--dry-run', str(tmp_path / 'x')])
    assert e.value.code == 2 and 'ORG/NAME' in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        publish_main([str(tmp_path), '--repo-id', 'a/b', '--dry-run', str(tmp_path / 'y')])
    assert 'needs config.json and model.safetensors' in capsys.readouterr().err
    untrained = tmp_path / 'untrained'
    save_for_hf(timm.create_model('pss_mobilenetv2'), str(untrained), safe_serialization=True)
    with pytest.raises(SystemExit):
        publish_main([str(untrained), '--repo-id', 'a/b', '--dry-run', str(tmp_path / 'z')])
    assert '--pss-finalize-only' in capsys.readouterr().err


def test_torch_hub_local(run_dir):
    model = torch.hub.load(str(ROOT), 'pss_mobilenetv2', source='local', num_classes=5)
    assert isinstance(model, timm_pss.PssEfficientNet) and model.num_classes == 5
    with pytest.raises(RuntimeError, match='no budget table'):
        torch.hub.load(str(ROOT), 'pss_mobilenetv1', source='local', budget='300M')
    import importlib.util
    spec = importlib.util.spec_from_file_location('hubconf', ROOT / 'hubconf.py')
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    public = sorted(n for n in vars(hubconf) if callable(getattr(hubconf, n)) and not n.startswith('_'))
    assert public == ['pss_mobilenetv1', 'pss_mobilenetv2', 'pss_resnet50']
    assert all('budget' in getattr(hubconf, n).__doc__ for n in public)
    assert {'torch', 'timm'} <= set(hubconf.dependencies)


def test_model_card_at_the_repo_root():
    card = (ROOT / 'MODEL_CARD.md').read_text()
    assert '<!-- card -->' in card and '${results_table}' in card and 'Prioritized Subnet Sampling' in card


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_publish_never_writes_over_a_run_folder(run_dir, tmp_path, capsys):
    """--dry-run RUN_B used to replace RUN_B's model.safetensors, README.md and results; now it is refused."""
    run_b = tmp_path / 'run_b'
    shutil.copytree(run_dir, run_b)
    (run_b / 'results.csv').write_text('entry,flops\n0,1\n')
    (run_b / 'model.safetensors').write_bytes(b'run B weights')
    before = _snapshot(run_b)
    for extra in ([], ['--force']):
        with pytest.raises(SystemExit) as e:
            publish_main([str(run_dir), '--repo-id', 'a/b', '--dry-run', str(run_b), *extra])
        err = capsys.readouterr().err
        assert e.value.code == 2 and 'training run folder' in err and len(err.strip().splitlines()) == 1
    assert _snapshot(run_b) == before


def test_publish_dry_run_needs_a_new_or_empty_folder(run_dir, tmp_path, monkeypatch, capsys):
    cwd = tmp_path / 'cwd'
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    with pytest.raises(SystemExit) as e:  # '' used to write into the current directory
        publish_main([str(run_dir), '--repo-id', 'a/b', '--dry-run', ''])
    assert e.value.code == 2 and 'empty' in capsys.readouterr().err and list(cwd.iterdir()) == []
    other = tmp_path / 'other'
    other.mkdir()
    (other / 'notes.txt').write_text('mine')
    with pytest.raises(SystemExit) as e:
        publish_main([str(run_dir), '--repo-id', 'a/b', '--dry-run', str(other)])
    assert e.value.code == 2 and '--force' in capsys.readouterr().err
    assert [p.name for p in other.iterdir()] == ['notes.txt']
    assert publish_main([str(run_dir), '--repo-id', 'a/b', '--dry-run', str(other), '--force']) == 0
    assert (other / 'notes.txt').read_text() == 'mine' and (other / 'model.safetensors').is_file()
    empty = tmp_path / 'empty'
    empty.mkdir()
    assert publish_main([str(run_dir), '--repo-id', 'a/b', '--dry-run', str(empty)]) == 0


def test_hub_files_are_written_atomically(run_dir, tmp_path, monkeypatch):
    """A serializer failing mid-write leaves the folder's previous config.json and weights, and no temporary."""
    import timm.models._hub as timm_hub
    folder = tmp_path / 'hub'
    shutil.copytree(run_dir, folder)
    before = _snapshot(folder)
    model = timm.create_model('pss_mobilenetv2', num_classes=7)

    def partial_config(model, path, **kwargs):
        Path(path).write_text('{"architecture": "pss_mobil')
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(timm_hub, 'save_config_for_hf', partial_config)
    with pytest.raises(OSError, match='No space left'):
        timm_pss.publish.save_hub_files(model, folder)
    assert _snapshot(folder) == before


def test_a_truncated_config_json_names_the_file(run_dir, tmp_path, capsys):
    broken = tmp_path / 'broken'
    shutil.copytree(run_dir, broken)
    (broken / 'config.json').write_text('')  # what a kill during a non-atomic write left behind
    with pytest.raises(ValueError, match='config.json is not valid JSON'):
        timm_pss.runs.load_run(broken)
    with pytest.raises(SystemExit) as e:
        publish_main([str(broken), '--repo-id', 'a/b', '--dry-run', str(tmp_path / 'out')])
    assert e.value.code == 2 and f'{broken / "config.json"} is not valid JSON' in capsys.readouterr().err


# --- the Hub page in timm's layout, publish options, failing fast offline ---

def _python_blocks(card: str) -> list:
    return [block.split('```', 1)[0] for block in card.split('```python\n')[1:]]


def test_model_card_is_timm_layout_with_measured_metadata(published):
    """Metadata parsed back by huggingface_hub: timm library, timm_pss tag, top-1 of every budget entry."""
    from huggingface_hub import ModelCard
    card = ModelCard.load(published / 'README.md')
    data = card.data
    assert data.library_name == 'timm' and data.pipeline_tag == 'image-classification'
    assert {'timm', 'timm_pss', 'image-classification'} <= set(data.tags) and data.license == 'apache-2.0'
    assert data.base_model is None and data.datasets is None  # not warm-started; digits are no Hub dataset
    reference = timm.create_model(f'local-dir:{published}', pretrained=True)
    assert data.model_name == REPO and len(data.eval_results) == len(reference.budget_table) == 3
    for result, entry in zip(data.eval_results, reference.budget_table):
        assert result.metric_type == 'accuracy' and result.metric_value == entry.metrics['top1']
        assert f'{entry.flops / 1e6:.2f} MMACs' in result.metric_name
        assert result.task_type == 'image-classification' and result.dataset_name == 'scikit-learn digits'
    text = card.text
    sections = ['# Model card for ' + REPO, '## Model Details', '## Model Usage', '### Image Classification',
                '### Feature Map Extraction', '### Image Embeddings', '## Budget Table', '## Citation']
    assert all(s in text for s in sections)
    assert [text.index(s) for s in sections] == sorted(text.index(s) for s in sections)
    assert '300.84M (max subnet), 69.15M (min subnet)' in text and 'Params (M): 3.50' in text
    blocks = _python_blocks(text)
    assert len(blocks) == 3
    for block in blocks:
        assert block.startswith('# pip install .') and 'import timm_pss' in block
    assert 'pypi.org' not in text and 'not on PyPI' in text


def test_model_card_snippets_run(published, monkeypatch, capsys):
    """The card's three snippets, run as written against a local-dir: copy (the image read from a local file)."""
    import urllib.request
    image = ROOT / 'tests' / 'data' / 'plot.png'
    opened = []
    monkeypatch.setattr(urllib.request, 'urlopen', lambda url: opened.append(url) or open(image, 'rb'))
    blocks = _python_blocks((published / 'README.md').read_text())
    namespaces = []
    for block in blocks:
        assert f"'hf-hub:{REPO}'" in block
        namespace = {}
        exec(compile(block.replace(f'hf-hub:{REPO}', f'local-dir:{published}'), 'card', 'exec'), namespace)
        namespaces.append(namespace)
    assert len(opened) == 3
    classify, features, embed = namespaces
    entry = classify['model'].budget_table[1]
    assert classify['model'].active_budget_index == 1 and classify['data_config']['input_size'][1:] == \
        (entry.subnet.resolution,) * 2
    assert classify['top5_class_indices'].shape == (1, 5) and classify['output'].shape == (1, 1000)
    assert len(features['output']) == 5 and 'torch.Size' in capsys.readouterr().out
    assert embed['output'].shape == (1, embed['model'].num_features) and embed['model'].num_classes == 0


def test_base_model_and_dataset_come_from_the_run_args():
    hub = timm_pss.publish
    cached = '/home/u/.cache/huggingface/hub/models--timm--mobilenetv2_100.ra_in1k/snapshots/0a1b/model.safetensors'
    assert hub.warm_start_model({'model': 'pss_mobilenetv2', 'initial_checkpoint': cached}) == \
        'timm/mobilenetv2_100.ra_in1k'
    assert hub.warm_start_model({'model': 'pss_mobilenetv2', 'pretrained': True}) == REPO
    assert hub.warm_start_model({'model': 'hf-hub:me/pss@v1', 'pretrained': True}) == 'me/pss'
    assert hub.warm_start_model({'model': 'pss_mobilenetv2', 'initial_checkpoint': 'mobilenetv2.pth'}) is None
    assert hub.warm_start_model({'model': 'pss_mobilenetv2', 'pretrained': False}) is None
    assert hub.warm_start_model(None) is None
    assert hub.training_dataset({'dataset': 'hfds/timm/mini-imagenet'})[1:] == ('timm/mini-imagenet',) * 2
    assert hub.training_dataset({'data_dir': '/data/imagenet/'})[1:] == ('imagenet', None)
    assert hub.training_dataset({'dataset': 'torch/cifar10'})[1:] == ('cifar10', None)
    assert hub.training_dataset({'model': 'pss_mobilenetv1'})[1:] == ('scikit-learn digits', None)
    assert hub.training_dataset(None) == (None, None, None)


def test_model_card_metadata_of_a_warm_started_hub_dataset_run(run_dir):
    from huggingface_hub import ModelCard
    model = timm.create_model(f'local-dir:{run_dir}', pretrained=True)
    args = {'model': 'pss_mobilenetv2', 'dataset': 'hfds/timm/mini-imagenet', 'pretrained': True}
    card = ModelCard(timm_pss.publish.render_model_card(model, 'me/pss', args))
    assert card.data.base_model == REPO and card.data.datasets == ['timm/mini-imagenet']
    assert {r.dataset_type for r in card.data.eval_results} == {'timm/mini-imagenet'}
    assert f'**Warm-started from:** [{REPO}]' in card.text
    bare = ModelCard(timm_pss.publish.render_model_card(model, 'me/pss'))  # nothing recorded: no dataset, no results
    assert bare.data.eval_results is None and bare.data.datasets is None and 'not recorded' in bare.text


def _fake_hub(monkeypatch, readme_on_hub: bool) -> dict:
    import huggingface_hub
    calls = {}

    class Repo:
        repo_id = 'someone/pss'

    class Commit:
        commit_url = 'https://huggingface.co/someone/pss/commit/abc'
        pr_url = 'https://huggingface.co/someone/pss/discussions/1'

    def file_exists(self, repo_id, filename, revision=None, **kw):
        calls['file_exists'] = dict(repo_id=repo_id, filename=filename, revision=revision)
        return readme_on_hub

    def upload_folder(self, repo_id, folder_path, **kw):
        calls['upload'] = dict(kw, repo_id=repo_id, files=sorted(p.name for p in Path(folder_path).iterdir()))
        return Commit()

    monkeypatch.setattr(huggingface_hub.HfApi, 'create_repo', lambda self, repo_id, **kw: Repo())
    monkeypatch.setattr(huggingface_hub.HfApi, 'file_exists', file_exists)
    monkeypatch.setattr(huggingface_hub.HfApi, 'upload_folder', upload_folder)
    return calls


def test_publish_passes_revision_and_create_pr_and_keeps_the_hub_readme(run_dir, monkeypatch, capsys):
    calls = _fake_hub(monkeypatch, readme_on_hub=True)
    assert publish_main([str(run_dir), '--repo-id', 'someone/pss', '--revision', 'v2', '--create-pr']) == 0
    assert 'discussions/1' in capsys.readouterr().out
    assert calls['file_exists'] == dict(repo_id='someone/pss', filename='README.md', revision='v2')
    upload = calls['upload']
    assert upload['revision'] == 'v2' and upload['create_pr'] is True and upload['repo_id'] == 'someone/pss'
    assert 'README.md' not in upload['files'] and {'config.json', 'model.safetensors'} <= set(upload['files'])
    calls = _fake_hub(monkeypatch, readme_on_hub=True)
    assert publish_main([str(run_dir), '--repo-id', 'someone/pss', '--overwrite-readme']) == 0
    assert 'README.md' in calls['upload']['files'] and calls['upload']['revision'] is None
    assert calls['upload']['create_pr'] is False
    calls = _fake_hub(monkeypatch, readme_on_hub=False)  # a new repository gets the generated card
    timm_pss.publish.publish(run_dir, 'someone/pss')
    assert 'README.md' in calls['upload']['files']


def test_publish_dry_run_keeps_a_hand_edited_readme(run_dir, tmp_path):
    folder = tmp_path / 'hub'
    folder.mkdir()
    (folder / 'README.md').write_text('my own card')
    assert publish_main([str(run_dir), '--repo-id', 'a/b', '--dry-run', str(folder), '--force']) == 0
    assert (folder / 'README.md').read_text() == 'my own card' and (folder / 'model.safetensors').is_file()
    assert publish_main([str(run_dir), '--repo-id', 'a/b', '--dry-run', str(folder), '--force',
                         '--overwrite-readme']) == 0
    assert (folder / 'README.md').read_text().startswith('---\n')


@pytest.fixture
def no_downloads(monkeypatch):
    """Records every Hub download timm would start; each fails as a missing network would."""
    import timm.models._hub as timm_hub
    calls = []

    def hf_hub_download(*args, **kwargs):
        calls.append((args, kwargs))
        raise OSError('no network')

    monkeypatch.setattr(timm_hub, 'hf_hub_download', hf_hub_download)
    return calls


def test_pretrained_fails_at_once_in_offline_mode(no_downloads, monkeypatch, tmp_path):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    with pytest.raises(RuntimeError, match='offline mode is on') as e:
        timm.create_model('pss_mobilenetv2', pretrained=True, cache_dir=tmp_path / 'empty_cache')
    assert 'timm-pss/pss_mobilenetv2.pss_in1k' in str(e.value) and 'pretrained_cfg_overlay' in str(e.value)
    assert no_downloads == []  # no download attempted, so no retries


def test_pretrained_fails_at_once_when_the_hub_cannot_be_reached(no_downloads, monkeypatch, tmp_path):
    import socket
    from huggingface_hub import constants
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', False)
    for name in ('HTTPS_PROXY', 'https_proxy', 'ALL_PROXY', 'all_proxy'):
        monkeypatch.delenv(name, raising=False)
    probes = []

    def create_connection(address, timeout=None, *args, **kwargs):
        probes.append((address, timeout))
        raise socket.gaierror(-2, 'Name or service not known')

    monkeypatch.setattr(socket, 'create_connection', create_connection)
    with pytest.raises(RuntimeError, match='cannot be reached'):
        timm.create_model('pss_mobilenetv2', pretrained=True, cache_dir=tmp_path / 'empty_cache')
    assert no_downloads == [] and len(probes) == 1 and probes[0][1] <= 1.0


def test_cached_weights_load_without_probing_the_hub(published, no_downloads, monkeypatch, tmp_path):
    """In the cache, weights are timm's to load: the offline check neither refuses nor probes the network."""
    import socket
    from huggingface_hub import constants
    cache = tmp_path / 'cache'
    _hf_cache(cache, REPO, published)
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', False)
    monkeypatch.setattr(socket, 'create_connection', lambda *a, **k: pytest.fail('probed the network'))
    cfg = timm.models.get_pretrained_cfg('pss_mobilenetv2.pss_in1k').to_dict()
    assert timm_pss.hub.hub_unreachable_reason(cfg, cache_dir=cache) is None
    assert timm_pss.hub.hub_unreachable_reason(dict(cfg, file=str(published / 'model.safetensors'))) is None
