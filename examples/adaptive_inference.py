"""Serve a trained supernet under a latency target: the controller picks the budget-table entry for each call.

    python train_pss.py --model pss_mobilenetv1 --output runs          # a run to serve (digits, a few minutes)
    python examples/adaptive_inference.py runs/<run folder> --target-ms 5
"""
import argparse

import timm
import torch
from sklearn.datasets import load_digits

import timm_pss  # noqa: F401  (registers the models)
from timm_pss.adapt import AdaptiveServer, LatencyTarget, SupernetEntries, measure_latency

parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
parser.add_argument('run', help='a train_pss.py run folder')
parser.add_argument('--target-ms', type=float, default=5.0, help='p95 latency target (ms)')
args = parser.parse_args()

torch.set_num_threads(1)
model = timm.create_model(f'local-dir:{args.run}', pretrained=True).eval()
entries = SupernetEntries(model)
# the table holds no latencies for this machine: measure them, so the server starts on the best entry that fits
server = AdaptiveServer(entries, LatencyTarget(ms=args.target_ms, percentile=95),
                        latency_ms=measure_latency(entries))

images = torch.tensor(load_digits().images[:500], dtype=torch.float32).unsqueeze(1).repeat(1, 3, 1, 1) / 16.0
mean, std = (torch.tensor(model.pretrained_cfg[k]).view(1, 3, 1, 1) for k in ('mean', 'std'))
images = (images - mean) / std
for image in images:
    logits = server(image[None])  # resized to the active entry's resolution by the model
print(server.report())
