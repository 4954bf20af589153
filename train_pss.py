#!/usr/bin/env python3
"""Train a timm_pss supernet with Prioritized Subnet Sampling on timm's training recipe: `python train_pss.py
--help`. The command is `timm_pss.train` (installed as `train-pss`); this script runs it from a checkout."""
from timm_pss.train import main

if __name__ == '__main__':
    main()
