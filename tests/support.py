"""Helpers shared by several test files (imported as `support`; pytest puts tests/ on sys.path)."""
import torch

# a safety net against a hung subprocess, not a speed requirement: CI machines may be slow or busy
SUBPROCESS_TIMEOUT = 1800


def outputs_per_budget(model, x):
    """The model's logits for `x` at every budget-table entry, in table order."""
    outs = []
    with torch.no_grad():
        for index in range(len(model.budget_table)):
            model.set_budget_entry(index)
            outs.append(model(x))
    return outs
