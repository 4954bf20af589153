"""timm_pss: resource-adaptive supernets trained with Prioritized Subnet Sampling (PSS-Net), as timm models.

`import timm_pss` registers `pss_mobilenetv1`, `pss_mobilenetv2` and `pss_resnet50` with timm.
"""
import timm as _timm

from .requirements import check_timm_version as _check_timm_version

_check_timm_version(_timm.__version__)

from .budget_table import BudgetEntry, BudgetTable
from .units import parse_flops
from .calibration import calibrate_bn, fill_budget_table
from .export import export_subnet
from .models import PssEfficientNet, PssResNet
from .pss import PrioritizedSubnetSampler, PSSTask, finalize_budget_table
from .spaces import SearchSpace, Subnet, SubnetBatch
from .supernet import SupernetMixin, budget, find_supernet, set_budget

__version__ = '0.1.0'

__all__ = [
    'BudgetEntry', 'BudgetTable', 'budget', 'calibrate_bn', 'export_subnet', 'fill_budget_table',
    'finalize_budget_table', 'find_supernet', 'parse_flops', 'PrioritizedSubnetSampler', 'PssEfficientNet',
    'PssResNet', 'PSSTask', 'SearchSpace', 'set_budget', 'Subnet', 'SubnetBatch', 'SupernetMixin',
]
