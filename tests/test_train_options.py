"""Parity with timm's train.py: its args.yaml as -c, the embedded defaults, --help, the learning-rate scaling and
weight-decay rules, the options refused because they mean something else here or cannot work."""
import sys
from pathlib import Path

import pytest
import timm

from timm_pss.train.args import build_parser, parse_args
from timm_pss.train.checks import check_run_args, eval_metric_names
from timm_pss.train.optimizer import create_optimizer, depthwise_weight_names, lr_base_scale, scaled_lr
from train_support import TINY, usage_error

ROOT = Path(__file__).resolve().parents[1]


def test_timm_args_yaml_is_accepted_with_a_warning_for_unused_keys(caplog):
    """tests/data/timm_args.yaml is what timm's train.py writes (every option of its parser, here for --data-dir
    /data/imagenet): it is read, our keys apply, the others are named in one warning."""
    timm_args = str(ROOT / 'tests/data/timm_args.yaml')
    with caplog.at_level('INFO', logger='train_pss'):
        args, _ = parse_args(['-c', timm_args, '--epochs', '3'])
    assert args.data_dir == '/data/imagenet' and args.epochs == 3 and args.batch_size == 128
    assert args.hflip == 0.5 and args.scale == [0.08, 1.0]  # a named dataset: timm's defaults, not the digits'
    warnings = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING']
    assert len(warnings) == 1 and 'naflex_loader' in warnings[0] and 'kd_model_name' in warnings[0]
    assert not any('embedded digits' in r.getMessage() for r in caplog.records)


def test_embedded_defaults_apply_only_when_no_dataset_is_named(tmp_path, caplog):
    config = tmp_path / 'c.yaml'
    config.write_text('data_dir: /data/imagenet\n')
    args, _ = parse_args(['-c', str(config)])  # data_dir in the YAML: timm's defaults, not the digits'
    assert (args.batch_size, args.lr, args.hflip, args.pss_num_pools) == (128, None, 0.5, 40)
    config.write_text('data: /data/imagenet\n')  # timm's old positional dataset path
    assert parse_args(['-c', str(config)])[0].data_dir == '/data/imagenet'
    config.write_text('epochs: 3\n')
    with caplog.at_level('INFO', logger='train_pss'):
        args, _ = parse_args(['-c', str(config), '-b', '16'])
    assert (args.epochs, args.batch_size, args.lr, args.hflip) == (3, 16, 0.1, 0.0)
    shown = [r.getMessage() for r in caplog.records if 'embedded digits' in r.getMessage()]
    assert len(shown) == 1 and 'lr=0.1' in shown[0] and ' epochs=' not in shown[0] and 'batch_size' not in shown[0]


@pytest.mark.parametrize('text, expected', [
    ('epochs: 2.5\n', 'epochs: 2.5 is not an integer'),
    ('lr: fast\n', "lr: 'fast' is not a valid float"),
    ('pss_metrics: [speed]\n', "'speed' is not one of flops, latency"),
    ('pss_resolutions: [16, 24]\n', 'has 2 values, 3 expected'),
    ('amp: yes please\n', 'is not true or false'),
    ('- a list\n', 'not a mapping'),
])
def test_config_values_are_converted_and_checked(tmp_path, capsys, text, expected):
    config = tmp_path / 'c.yaml'
    config.write_text(text)
    with pytest.raises(SystemExit) as e:
        parse_args(['-c', str(config)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and expected in err, err
    config.write_text('lr: 1e-3\nepochs: "7"\npss_budget_range: [110M, 5.7e8, 10M]\n')  # YAML strings convert
    args, _ = parse_args(['-c', str(config)])
    assert (args.lr, args.epochs, args.pss_budget_range) == (1e-3, 7, [110e6, 570e6, 10e6])


def _help_default(text: str, option: str) -> str:
    """The '(default: X)' that --help shows for `option` (the help may wrap onto the next lines)."""
    block = text[text.index(option + ' '):]
    return block[block.index('(default: ') + len('(default: '):block.index(')', block.index('(default: '))]


def test_help_gives_every_option_one_line_and_the_defaults_that_apply(capsys):
    parser = build_parser()
    options = [a for a in parser._actions if a.option_strings and a.dest != 'help']
    missing = [a.option_strings[-1] for a in options if not a.help or '\n' in a.help]
    assert not missing, f'options without a one-line help: {missing}'
    for argv, batch, epochs, hflip in (([], 64, 25, 0.0), (['--data-dir', '/data/imagenet'], 128, 300, 0.5)):
        with pytest.raises(SystemExit) as e:
            parse_args(argv + ['--help'])
        text = capsys.readouterr().out
        assert e.value.code == 0
        args, _ = parse_args(argv)
        assert (args.batch_size, args.epochs, args.hflip) == (batch, epochs, hflip)
        assert _help_default(text, '--batch-size N') == str(args.batch_size)
        assert _help_default(text, '--epochs N') == str(args.epochs)
        assert _help_default(text, '--hflip HFLIP') == str(args.hflip)
        assert _help_default(text, '--checkpoint-hist N') == str(args.checkpoint_hist)


def test_lr_base_scale_follows_the_optimizer_as_in_timm():
    assert [lr_base_scale(o) for o in ('sgd', 'momentum', 'adamw', 'AdaBelief', 'lamb', 'nadam')] == \
        ['linear', 'linear', 'sqrt', 'sqrt', 'sqrt', 'sqrt']
    assert scaled_lr(0.1, 1024, 256, 'linear') == pytest.approx(0.4)
    assert scaled_lr(0.1, 1024, 256, 'sqrt') == pytest.approx(0.2)
    args, _ = parse_args(['--data-dir', '/data'])
    assert args.checkpoint_hist == 10 and args.lr_base_scale == ''


def test_layer_decay_is_kept_without_depthwise_weight_decay():
    """The recipes' pss_wd_depthwise: false used to build its own groups and drop --layer-decay."""
    model = timm.create_model('pss_mobilenetv2', num_classes=10)
    args, _ = parse_args(['--data-dir', '/data', '--no-pss-wd-depthwise', '--layer-decay', '0.5',
                                    '--lr', '0.1', '--weight-decay', '1e-4'])
    optimizer = create_optimizer(model, args)
    groups = optimizer.param_groups
    assert len({g['lr_scale'] for g in groups}) > 2  # layer-wise scales
    decayed = {id(p) for g in groups if g['weight_decay'] > 0 for p in g['params']}
    depthwise = dict(model.named_parameters())
    names = depthwise_weight_names(model)
    assert names and not decayed & {id(depthwise[n]) for n in names}
    assert id(model.conv_stem.weight) in decayed and id(model.bn1.weight) not in decayed
    assert sum(len(g['params']) for g in groups) == len(list(model.parameters()))


def test_grayscale_stem_is_not_taken_for_a_depthwise_conv():
    model = timm.create_model('pss_mobilenetv1', num_classes=10, in_chans=1)
    assert 'conv_stem.weight' not in depthwise_weight_names(model)


@pytest.mark.parametrize('extra, expected', [
    (['--eval-metric', 'loss'], '--eval-metric loss is not recorded by train_pss.py'),
    (['--img-size', '64'], '--img-size 64: a supernet trains each subnet at its own resolution (16..24 px'),
    (['--input-size', '3', '32', '32'], '--input-size 3 32 32: a supernet'),
])
def test_timm_options_with_another_meaning_are_refused(tmp_path, capsys, extra, expected):
    argv = TINY + ['--output', str(tmp_path / 'out'), '--epochs', '1'] + extra
    assert expected in usage_error(argv, capsys)
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('extra, expected', [
    (['--sync-bn'], '--sync-bn cannot work with a supernet'),
    (['--val-interval', '0'], '--val-interval must be at least 1, got 0'),
    (['--aug-repeats', '3'], '--aug-repeats 3 repeats each image across ranks: it needs distributed training'),
    (['--drop-connect', '0.1', '--drop-path', '0.1'], '--drop-connect is the deprecated name of --drop-path'),
    (['--log-wandb'], '--log-wandb needs the wandb package'),
])
def test_timm_options_that_cannot_work_are_refused_in_one_line(tmp_path, capsys, monkeypatch, extra,
                                                                expected):
    monkeypatch.setitem(sys.modules, 'wandb', None)  # wandb absent (importing it fails), installed or not
    argv = TINY + ['--output', str(tmp_path / 'out'), '--epochs', '1'] + extra
    assert expected in usage_error(argv, capsys)
    assert not (tmp_path / 'out').exists()


def test_drop_connect_is_drop_path():
    assert parse_args(['--drop-connect', '0.1'])[0].drop_path == 0.1


def test_eval_metric_names_a_recorded_metric():
    args, _ = parse_args(['--pss-eval-budgets', '300M', '--eval-metric', 'top1@300M'])
    check_run_args(args)
    assert args.eval_metric == 'top1@300.00M' and args.eval_metric in eval_metric_names(args)
