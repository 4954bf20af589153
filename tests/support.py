"""Helpers shared by several test files (imported as `support`; pytest puts tests/ on sys.path)."""
import torch


def outputs_per_budget(model, x):
    """The model's logits for `x` at every budget-table entry, in table order."""
    outs = []
    with torch.no_grad():
        for index in range(len(model.budget_table)):
            model.set_budget_entry(index)
            outs.append(model(x))
    return outs
