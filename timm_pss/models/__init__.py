"""The registered `pss_*` timm models; importing this module registers them."""
from .pss_mobilenet import PssEfficientNet, pss_mobilenetv1, pss_mobilenetv2
from .pss_resnet import PssResNet, pss_resnet50
