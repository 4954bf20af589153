"""export_subnet gives a genuine timm model of the active subnet: same outputs, exact FLOPs, scriptable."""
import pytest
import torch
import timm
from fvcore.nn import FlopCountAnalysis
from timm.models.efficientnet import EfficientNet
from timm.models.resnet import ResNet

import timm_pss

DENSE_CLASS = {'pss_mobilenetv1': EfficientNet, 'pss_mobilenetv2': EfficientNet, 'pss_resnet50': ResNet}


def _trained_like(name, seed=0):
    """A supernet with non-trivial BN statistics and affine parameters, in eval mode."""
    torch.manual_seed(seed)
    model = timm.create_model(name, num_classes=10)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def _macs(model, resolution):
    analysis = FlopCountAnalysis(model, torch.randn(1, 3, resolution, resolution))
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    ops = analysis.by_operator()
    return ops['conv'] + ops.get('linear', 0) + ops.get('adaptive_avg_pool2d', 0)


@pytest.mark.parametrize('name', DENSE_CLASS)
def test_exported_model_is_the_dense_class_with_same_outputs(name):
    model = _trained_like(name)
    subnet = model.set_subnet(model.space.sample(rng=7))
    exported = timm_pss.export_subnet(model)
    assert type(exported) is DENSE_CLASS[name]
    assert not any(isinstance(m, timm_pss.slimmable.SlimmableLayer) for m in exported.modules())
    assert exported.pretrained_cfg['input_size'] == (3, subnet.resolution, subnet.resolution)
    assert exported.pretrained_cfg['architecture'] == model.dense_architecture
    assert exported.pretrained_cfg['pss_subnet'] == subnet.to_dict()
    assert exported.num_features == model.num_features
    x = torch.randn(2, 3, subnet.resolution, subnet.resolution)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(exported(x), expected, rtol=1e-5, atol=1e-5)
        # the export owns copies: changing the supernet afterwards leaves it alone
        for p in model.parameters():
            p.zero_()
        torch.testing.assert_close(exported(x), expected, rtol=1e-5, atol=1e-5)
    n_params = sum(p.numel() for p in exported.parameters())
    assert n_params < sum(p.numel() for p in timm.create_model(model.dense_architecture, num_classes=10).parameters())


@pytest.mark.parametrize('name', DENSE_CLASS)
def test_flops_agree_exactly_with_fvcore(name):
    model = timm.create_model(name)
    space = model.space
    subnets = [space.max_subnet(), space.min_subnet()] + [space.sample(rng=i) for i in range(3)]
    for subnet in subnets:
        model.set_subnet(subnet)
        assert _macs(timm_pss.export_subnet(model), subnet.resolution) == space.flops(subnet), subnet


def test_export_through_wrappers_and_of_features_model_refused():
    model = _trained_like('pss_mobilenetv2')
    model.set_subnet(model.space.min_subnet())
    assert type(timm_pss.export_subnet(torch.nn.DataParallel(model))) is EfficientNet
    features = timm.create_model('pss_mobilenetv2', features_only=True)
    with pytest.raises(TypeError, match='features_only'):
        timm_pss.export_subnet(features)


@pytest.mark.parametrize('name', ['pss_mobilenetv2', 'pss_resnet50'])
def test_exported_model_scripts_and_exports(name):
    model = _trained_like(name)
    subnet = model.set_subnet(model.space.min_subnet())
    exported = timm_pss.export_subnet(model)
    x = torch.randn(1, 3, subnet.resolution, subnet.resolution)
    with torch.no_grad():
        expected = exported(x)
        scripted = torch.jit.script(exported)
        torch.testing.assert_close(scripted(x), expected)
        program = torch.export.export(exported, (x,))
        torch.testing.assert_close(program.module()(x), expected)
