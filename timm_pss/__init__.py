"""timm_pss: resource-adaptive supernets trained with Prioritized Subnet Sampling (PSS-Net), as timm models.

`import timm_pss` registers `pss_mobilenetv1`, `pss_mobilenetv2` and `pss_resnet50` with timm.
"""
from .export import export_subnet
from .models import PssEfficientNet, PssResNet
from .spaces import SearchSpace, Subnet, SubnetBatch
from .supernet import SupernetMixin, find_supernet

__version__ = '0.1.0'

__all__ = [
    'export_subnet', 'find_supernet', 'PssEfficientNet', 'PssResNet', 'SearchSpace', 'Subnet', 'SubnetBatch',
    'SupernetMixin',
]
