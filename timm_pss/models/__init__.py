"""The registered `pss_*` timm models; importing this module registers them."""
from .pss_mobilenet import PssEfficientNet, pss_mobilenetv1, pss_mobilenetv2  # noqa: F401 (registers them)
from .pss_resnet import PssResNet, pss_resnet50  # noqa: F401 (registers it)
from .static_subnet import timm_pss_subnet  # noqa: F401 (registers it; not a pss_* supernet)
