"""Train a timm_pss supernet with Prioritized Subnet Sampling on timm's training recipe.

    python train_pss.py --model pss_mobilenetv1              # embedded digits dataset, CPU, a few minutes
    python train_pss.py --data-dir /data/imagenet -c recipes/pss_mobilenetv2_imagenet.yaml
    torchrun --nproc_per_node=8 train_pss.py --data-dir /data/imagenet -c recipes/pss_mobilenetv2_imagenet.yaml

Options shared with timm's train.py keep its names and meanings (a YAML file given with -c/--config sets their
defaults); the PSS options are the --pss-* group. Without --data-dir/--dataset it trains on scikit-learn's bundled
handwritten digits. The run folder gets checkpoints (last.pth.tar: model, optimizer, AMP scaler, EMA, pools and RNG
state, loadable with weights_only=True), model.safetensors (the supernet with its budget table) and timm's
config.json, so the folder loads with timm.create_model('local-dir:RUN') and publishes with
`python -m timm_pss.publish RUN --repo-id ORG/NAME`; results.csv / results.json, summary.csv, args.yaml and
accuracy_vs_flops.png.

The package behind the command (`train-pss`, or `python train_pss.py` from a checkout), one room per stage:

    args.py       the parser: one `add_*_args` per option group (the --pss-* group and its rules are
                  `timm_pss.pss.options`), the embedded digits defaults, `parse_args`
    config.py     -c/--config: YAML defaults converted and checked as the command line treats them
    checks.py     usage checks before long work, raising `UsageError` (exit 2) / `TrainingFailed` (exit 1)
    data.py       datasets (embedded digits or timm's), their classes/channels/normalisation, loaders
    optimizer.py  timm's optimizer, the LR scaled to the global batch, --no-pss-wd-depthwise
    run.py        `setup`: everything before the first epoch, gathered in a `TrainingRun`; the run folder
    loop.py       the epoch loop: training steps, pool work, rank 0's evaluation, schedule, checkpoints
    finalize.py   the budget table, its validation accuracy and latency, Hub files, results and plot
    cli.py        `main`: the stages in order; a `CommandError` ends the command with one line

Every module logs to the `train_pss` logger.
"""
from .cli import main

__all__ = ['main']
