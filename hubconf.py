"""torch.hub entrypoints for timm_pss supernets.

    model = torch.hub.load('<owner>/<repo>', 'pss_mobilenetv2', pretrained=True, budget='200M')

Every keyword goes to `timm.create_model`, so the serving kwargs of the `pss_*` entrypoints work here too:
`budget=` (FLOPs), `latency_ms=`, `budget_entry=` pick the budget-table entry served after the weights load, and
`resolution=` fixes the input size (see `timm_pss.models.build.build_supernet`). A model's FLOPs (MACs) span is
`model.space.flops_span`, counted by its space.
"""
dependencies = ['torch', 'timm', 'safetensors', 'huggingface_hub', 'numpy']


def _create(name: str, pretrained: bool, **kwargs):
    import timm
    import timm_pss  # noqa: F401  (registers the pss_* models)

    return timm.create_model(name, pretrained=pretrained, **kwargs)


def pss_mobilenetv1(pretrained: bool = False, **kwargs):
    """MobileNetV1 PSS supernet (14 channel groups, widths 0.75-1.0, 128-224px).

    pretrained: load the published weights with their budget table (the model then serves its top entry).
    budget: e.g. '300M', the best budget-table entry within that many MACs. kwargs go to timm.create_model.
    """
    return _create('pss_mobilenetv1', pretrained, **kwargs)


def pss_mobilenetv2(pretrained: bool = False, **kwargs):
    """MobileNetV2 PSS supernet (9 channel groups, head fixed, widths 0.75-1.0, 128-224px).

    pretrained: load the published weights with their budget table (the model then serves its top entry).
    budget: e.g. '200M', the best budget-table entry within that many MACs. kwargs go to timm.create_model.
    """
    return _create('pss_mobilenetv2', pretrained, **kwargs)


def pss_resnet50(pretrained: bool = False, **kwargs):
    """ResNet-50 PSS supernet (21 channel groups, widths 0.25-1.0, 128-224px).

    pretrained: load the published weights with their budget table (the model then serves its top entry).
    budget: e.g. '2G', the best budget-table entry within that many MACs. kwargs go to timm.create_model.
    """
    return _create('pss_resnet50', pretrained, **kwargs)
