"""A script in the style of timm's own (validate.py, benchmark.py): a model from --model and --model-kwargs through
timm.create_model, which only knows the pss_* models when timm_pss was imported first (timm-pss-run does that).
Prints what the model serves as JSON."""
import argparse
import json

import timm
from timm.data import resolve_data_config
from timm.utils import ParseKwargs

parser = argparse.ArgumentParser()
parser.add_argument('--model', required=True)
parser.add_argument('--pretrained', action='store_true')
parser.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs)
args = parser.parse_args()
model = timm.create_model(args.model, pretrained=args.pretrained, **args.model_kwargs)
print(json.dumps(dict(
    architecture=type(model).__name__, budget_index=model.active_budget_index, resolution=model.active_subnet.resolution,
    flops=model.space.flops(model.active_subnet), input_size=list(resolve_data_config({}, model=model)['input_size']))))
