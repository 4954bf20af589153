"""train_pss.py under careless or hostile input, kept as tables of the cases tried: each stops with one line naming
the option or file and what is allowed, exit code 2, before any training and without leaving a run folder; a write
that fails mid-run stops in one line saying how to continue."""
import resource
import subprocess

import pytest
import torch

from support import SUBPROCESS_TIMEOUT
from train_support import ROOT, TINY, train_command, usage_error, write_image_folders

# values timm or torch would take with a traceback (or silently): (extra arguments, what the line must say)
OPTION_VALUES = [
    (['--pss-num-pools', '0'], '--pss-num-pools must be at least 1'),
    (['--pss-pool-size', '0'], '--pss-pool-size must be at least 1'),
    (['--pss-momentum', '1.5'], '--pss-momentum must lie in [0, 1)'),
    (['--pss-momentum', 'nan'], '--pss-momentum must lie in [0, 1)'),
    (['--pss-p-random', '2', '-1'], '--pss-p-random START END are probabilities'),
    (['--pss-temperature', '0', '0'], '--pss-temperature START END must be above 0'),
    (['--pss-num-middle', '-1'], '--pss-num-middle must be at least 0'),
    (['--pss-budget-range', '11M', '6M', '1M'], '--pss-budget-range LO HI STEP needs 0 < LO < HI'),
    (['--pss-budget-range', '6M', '11M', '1'], 'at most 10000'),
    (['--pss-resolutions', '32', '24', '4'], '--pss-resolutions MIN MAX STEP needs 8 <= MIN <= MAX'),
    (['--pss-width-range', '1.0', '0.5'], '--pss-width-range LO HI needs 0 < LO <= HI'),
    (['--pss-width-range', 'nan', '1'], '--pss-width-range LO HI needs 0 < LO <= HI'),
    (['--pss-top-k', '0'], '--pss-top-k must be at least 1'),
    (['--pss-calib-batches', '0'], '--pss-calib-batches must be at least 1'),
    (['--lr', '-0.1'], '--lr must be above 0'),
    (['--smoothing', '1.5'], '--smoothing is a probability in [0, 1)'),
    (['--checkpoint-hist', '0'], '--checkpoint-hist must be at least 1'),
    (['--log-interval', '0'], '--log-interval must be at least 1'),
    (['--drop', '2.0'], '--drop is a probability in [0, 1)'),
    (['--seed', '-1'], '--seed must be at least 0'),
    (['--std', '0', '0', '0'], '--std values must be above 0'),
    (['--mean', 'nan'], '--mean values must be finite'),
    (['-j', '-1'], '-j/--workers must be at least 0'),
    (['--device', 'bogus'], '--device bogus: not a torch device'),
    (['--opt', 'bogus'], '--opt bogus: not one of timm\'s optimizers'),
    (['--sched', 'bogus'], '--sched bogus: timm\'s schedulers are'),
    (['--torchcompile', 'bogus'], '--torchcompile bogus: not a torch.compile backend'),
    (['--aa', 'garbage'], '--aa garbage: not an AutoAugment policy'),
    (['--class-map', '/missing/map.txt'], '--class-map /missing/map.txt: no such file'),
    (['--model-kwargs', 'junk'], '--model-kwargs takes KEY=VALUE items'),
    (['--num-classes', '0'], '--num-classes must be at least 1'),
    (['--num-classes', '3'], '--num-classes 3 is fewer than the 10 classes'),
    (['--clip-grad', '-1'], '--clip-grad must be above 0'),
    (['--warmup-epochs', '-1'], '--warmup-epochs must be at least 0'),
    (['--mixup', '-1'], '--mixup must be at least 0'),
    (['--start-epoch', '-1'], '--start-epoch must be at least 0'),
    (['--amp-dtype', 'bogus'], '--amp-dtype bogus: use one of float16, bfloat16'),
    (['--experiment', '/abs/path'], 'a run folder name, created under --output'),
    (['--experiment', '../../x'], 'a run folder name, created under --output'),
    (['--experiment', '..'], 'a run folder name, created under --output'),
    (['--initial-checkpoint', '/missing/w.pth.tar'], '--initial-checkpoint /missing/w.pth.tar: no such file'),
]


@pytest.mark.parametrize('extra, expected', OPTION_VALUES, ids=[' '.join(a) for a, _ in OPTION_VALUES])
def test_bad_option_values_stop_in_one_line(tmp_path, capsys, extra, expected):
    line = usage_error(TINY + ['--epochs', '1', '--output', str(tmp_path / 'out'), *extra], capsys)
    assert expected in line, line
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('case', ['dataset_name', 'data_dir_file', 'flat_class_folders'])
def test_data_that_cannot_serve_stops_in_one_line(tmp_path, capsys, case):
    """An unknown timm dataset, a file as --data-dir, and class folders without train/ and validation/ (which would
    train and validate on the same images) are refused."""
    (tmp_path / 'file.txt').write_text('not a dataset')
    write_image_folders(tmp_path / 'nested', ['c0', 'c1'])
    flat = tmp_path / 'nested' / 'train'  # class folders straight under the root
    extra, expected = {
        'dataset_name': (['--dataset', 'torch/nope', '--data-dir', str(tmp_path)], "--dataset 'torch/nope'"),
        'data_dir_file': (['--data-dir', str(tmp_path / 'file.txt')], 'is a file; give the dataset root folder'),
        'flat_class_folders': (['--data-dir', str(flat)], 'would validate on its training images'),
    }[case]
    line = usage_error(TINY + ['--epochs', '1', '--output', str(tmp_path / 'out'), *extra], capsys)
    assert expected in line, line
    assert not (tmp_path / 'out').exists()


def tamper(checkpoint: dict, case: str) -> dict:
    """A copy of a real train_pss.py checkpoint, broken as `case` says."""
    broken = dict(checkpoint)
    task_state = dict(broken['task_state'])
    if case == 'garbage_pools':
        task_state['pss_sampler'] = 'garbage'
    elif case == 'no_pools':
        task_state = 'garbage'
    elif case == 'bad_rng':
        task_state['rng'] = {'torch': torch.zeros(3, dtype=torch.uint8), 'numpy': [1], 'python': 3}
    elif case == 'negative_epoch':
        broken['epoch'] = -5
    elif case == 'absurd_epoch':
        broken['epoch'] = 10 ** 6
    elif case == 'text_epoch':
        broken['epoch'] = 'x'
    elif case == 'wrong_shape':
        broken['state_dict'] = {k: torch.zeros(3, 3) if k.endswith('conv_stem.weight') else v
                                for k, v in broken['state_dict'].items()}
    elif case == 'another_model':
        broken['state_dict'] = {'foo.weight': torch.zeros(2)}
    broken['task_state'] = task_state
    return broken


RESUME_CASES = {
    'garbage_pools': 'its pools, RNG or EMA state cannot be restored',
    'no_pools': 'its pools, RNG or EMA state cannot be restored',
    'bad_rng': 'malformed RNG state',
    'negative_epoch': 'records epoch -5, not a whole number >= 0',
    'absurd_epoch': 'is at epoch 1000000, beyond --epochs 3: nothing would train',
    'text_epoch': "records epoch 'x'",
    'wrong_shape': 'size mismatch for conv_stem.weight',
    'another_model': 'its weights do not fit pss_mobilenetv1',
    'truncated': 'weights_only=True) refused this file',
    'empty': 'weights_only=True) refused this file',
}


@pytest.mark.parametrize('case', list(RESUME_CASES))
def test_tampered_checkpoints_stop_in_one_line(trained_run, tmp_path, capsys, case):
    """--resume of a broken checkpoint stops in one line before training; as --initial-checkpoint too where the
    weights are what is broken."""
    run, _ = trained_run
    folder = tmp_path / 'run'
    folder.mkdir()
    target = folder / 'last.pth.tar'
    original = (run / 'last.pth.tar').read_bytes()
    if case in ('truncated', 'empty'):
        target.write_bytes(original[:len(original) // 2] if case == 'truncated' else b'')
    else:
        torch.save(tamper(torch.load(run / 'last.pth.tar', weights_only=True), case), target)
    base = TINY + ['--epochs', '3', '--output', str(tmp_path / 'out')]
    assert RESUME_CASES[case] in usage_error(base + ['--resume', str(folder)], capsys)
    if case in ('wrong_shape', 'another_model', 'truncated', 'empty'):
        line = usage_error(base + ['--initial-checkpoint', str(target)], capsys)
        assert line.startswith(f'train_pss.py: error: --initial-checkpoint {target}'), line
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('content, expected', [('a: ' + '[' * 100_000, 'nested too deeply'),
                                               (b'\xbf\xff\x00binary', 'is not UTF-8 text'),
                                               ('- 1\n- 2\n', 'holds a list'),
                                               ('epochs: [1, 2]\n', 'epochs: [1, 2] is not a single value')],
                         ids=['deeply_nested', 'binary', 'a_list', 'a_list_value'])
def test_bad_config_files_stop_in_one_line(tmp_path, capsys, content, expected):
    config = tmp_path / 'config.yaml'
    config.write_bytes(content if isinstance(content, bytes) else content.encode())
    line = usage_error(TINY + ['-c', str(config), '--output', str(tmp_path / 'out')], capsys)
    assert expected in line, line


def test_a_file_size_limit_mid_run_stops_in_one_line_and_leaves_no_partial_checkpoint(tmp_path):
    """A real file-size limit (RLIMIT_FSIZE, smaller than a checkpoint) hits timm's CheckpointSaver after the
    first epoch: the run stops in one line with exit code 1 and its partial tmp.pth.tar is removed."""
    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (512 * 1024, resource.RLIM_INFINITY))

    proc = subprocess.run(train_command('--epochs', '2', '--output', str(tmp_path), '--experiment', 'run'),
                          capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, cwd=ROOT,
                          preexec_fn=limit_file_size)
    errors = [line for line in proc.stderr.splitlines() if 'error:' in line]
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr and len(errors) == 1, proc.stderr[-3000:]
    assert f'could not write into the run folder {tmp_path / "run"}' in errors[0]
    assert 'start the run again' in errors[0]  # no complete checkpoint to continue from
    assert not (tmp_path / 'run' / 'tmp.pth.tar').exists()
