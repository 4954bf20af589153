"""torch.hub entrypoints for timm_pss supernets.

    model = torch.hub.load('<owner>/<repo>', 'pss_mobilenetv2', pretrained=True, budget='200M')
"""
dependencies = ['torch', 'timm', 'safetensors', 'huggingface_hub', 'numpy']


def _create(name: str, pretrained: bool, budget, **kwargs):
    import timm
    import timm_pss  # noqa: F401  (registers the pss_* models)

    model = timm.create_model(name, pretrained=pretrained, **kwargs)
    if budget is not None:
        model.set_budget(budget)
    return model


def pss_mobilenetv1(pretrained: bool = False, budget=None, **kwargs):
    """MobileNetV1 PSS supernet (14 channel groups, widths 0.75-1.0, 128-224px, 106.78-568.79 MFLOPs).

    pretrained: load the published weights with their budget table. budget: switch to the best budget-table
    entry within this many MACs, e.g. '300M' (needs a budget table). kwargs go to timm.create_model.
    """
    return _create('pss_mobilenetv1', pretrained, budget, **kwargs)


def pss_mobilenetv2(pretrained: bool = False, budget=None, **kwargs):
    """MobileNetV2 PSS supernet (9 channel groups, head fixed, widths 0.75-1.0, 128-224px, 69.15-300.84 MFLOPs).

    pretrained: load the published weights with their budget table. budget: switch to the best budget-table
    entry within this many MACs, e.g. '200M' (needs a budget table). kwargs go to timm.create_model.
    """
    return _create('pss_mobilenetv2', pretrained, budget, **kwargs)


def pss_resnet50(pretrained: bool = False, budget=None, **kwargs):
    """ResNet-50 PSS supernet (21 channel groups, widths 0.25-1.0, 128-224px, 0.091-4.09 GFLOPs).

    pretrained: load the published weights with their budget table. budget: switch to the best budget-table
    entry within this many MACs, e.g. '2G' (needs a budget table). kwargs go to timm.create_model.
    """
    return _create('pss_resnet50', pretrained, budget, **kwargs)
