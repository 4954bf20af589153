"""The pss_* models are timm models: registry, dense equivalence, and timm's model contract at max and min subnets.

The contract checks follow timm's own tests/test_models.py (default cfgs, backward, features, grad checkpointing).
"""
import pytest
import torch
import torch.nn.functional as F
import timm
from timm.data import resolve_data_config
from timm.models._manipulate import group_parameters

import timm_pss
from timm_pss import Subnet

MODELS = {'pss_mobilenetv1': 'mobilenetv1_100', 'pss_mobilenetv2': 'mobilenetv2_100', 'pss_resnet50': 'resnet50'}


def _subnet(model, which):
    space = model.space
    return space.max_subnet() if which == 'max' else space.min_subnet()


def test_registered_with_timm():
    assert timm.list_models('pss_*') == sorted(MODELS)
    for name in MODELS:
        assert timm.is_model(name)
        assert timm.create_model(name, device='meta').pretrained_cfg['architecture'] == name


@pytest.mark.parametrize('name', MODELS)
def test_full_width_is_the_dense_timm_model(name):
    torch.manual_seed(0)
    dense = timm.create_model(MODELS[name]).eval()
    supernet = timm.create_model(name).eval()
    dense_sd, super_sd = dense.state_dict(), supernet.state_dict()
    assert list(super_sd) == list(dense_sd)
    assert all(super_sd[k].shape == dense_sd[k].shape for k in dense_sd)
    supernet.load_state_dict(dense_sd, strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(supernet(x), dense(x), rtol=0, atol=0)


@pytest.mark.parametrize('which', ['max', 'min'])
@pytest.mark.parametrize('name', MODELS)
def test_default_cfg_contract(name, which):
    """timm's test_model_default_cfgs, on the meta device, with the max or the min subnet active."""
    with pytest.raises(TypeError):
        timm.create_model(name, device='meta', not_a_model_arg=1)
    model = timm.create_model(name, device='meta').eval()
    subnet = model.set_subnet(_subnet(model, which))
    cfg = model.pretrained_cfg
    assert cfg['input_size'] == (3, subnet.resolution, subnet.resolution)
    assert model.in_chans == cfg['input_size'][0]
    pool_size = cfg['pool_size']
    x = torch.randn(1, *cfg['input_size'], device='meta')

    feats = model.forward_features(x)
    pre = model.forward_head(feats, pre_logits=True)
    assert feats.shape[1] == model.num_features and tuple(feats.shape[2:]) == pool_size
    assert pre.shape[1] == model.head_hidden_size
    assert model(x).shape == (1, 1000)

    model.reset_classifier(0)
    assert model.num_classes == 0 and model.active_subnet == subnet
    out = model(x)
    assert out.shape == pre.shape
    model.reset_classifier(0, '')
    out = model(x)
    assert out.ndim == 4 and tuple(out.shape[2:]) == pool_size

    model = timm.create_model(name, device='meta', num_classes=0).eval()
    model.set_subnet(_subnet(model, which))
    assert model(x).shape == pre.shape
    model = timm.create_model(name, device='meta', num_classes=0, global_pool='').eval()
    model.set_subnet(_subnet(model, which))
    assert tuple(model(x).shape[1:]) == (pre.shape[1],) + pool_size

    sd = model.state_dict()
    assert cfg['classifier'] + '.weight' in timm.create_model(name, device='meta').state_dict()
    assert cfg['first_conv'] + '.weight' in sd
    groups = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    assert len(set(groups.values())) > 1


@pytest.mark.parametrize('name', MODELS)
def test_num_classes_in_chans_global_pool_kwargs(name):
    model = timm.create_model(name, num_classes=7, in_chans=1, global_pool='max').eval()
    model.set_subnet(model.space.min_subnet())
    r = model.active_subnet.resolution
    with torch.no_grad():
        assert model(torch.randn(2, 1, r, r)).shape == (2, 7)
    assert model.get_classifier().out_features == 7
    assert resolve_data_config(model=model)['input_size'][1:] == (r, r)
    # FLOPs follow the head: no average pool term with a max pool, 7 classes, 1 input channel
    default = timm.create_model(name, device='meta').space
    assert model.space.flops(model.active_subnet) < default.flops(default.min_subnet())
    with pytest.raises(ValueError, match='concatenates pools'):
        timm.create_model(name, device='meta', global_pool='catavgmax')


@pytest.mark.parametrize('name', MODELS)
def test_reset_classifier_keeps_subnet_and_resizes_from_full_width(name):
    model = timm.create_model(name, device='meta')
    full = model.num_features
    model.set_subnet(model.space.min_subnet())
    model.reset_classifier(5)
    assert model.get_classifier().in_features == full and model.get_classifier().out_features == 5
    assert model.active_subnet == model.space.min_subnet()
    x = torch.randn(1, 3, model.active_subnet.resolution, model.active_subnet.resolution, device='meta')
    assert model(x).shape == (1, 5)


@pytest.mark.parametrize('name', MODELS)
def test_backward_gives_every_parameter_a_gradient(name):
    # timm zero-inits each ResNet block's last BN gamma, which blocks gradients at init (in the dense model too)
    kwargs = dict(zero_init_last=False) if 'resnet' in name else {}
    model = timm.create_model(name, num_classes=42, **kwargs).train()
    model.set_subnet(Subnet(128, model.space.max_widths))  # max widths, small input keeps CPU time low
    out = model(torch.randn(2, 3, 128, 128))
    assert out.shape == (2, 42)
    out.mean().backward()
    for n, p in model.named_parameters():
        assert p.grad is not None, f'no gradient for {n}'
        assert p.grad.abs().sum() > 0, f'all-zero gradient for {n}'


@pytest.mark.parametrize('name', MODELS)
def test_grad_checkpointing_gives_same_output(name):
    model = timm.create_model(name).eval()
    model.set_subnet(model.space.sample(rng=0))
    r = model.active_subnet.resolution
    x = torch.randn(1, 3, r, r)
    with torch.no_grad():
        ref = model(x)
        model.set_grad_checkpointing(True)
        torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('which', ['max', 'min'])
@pytest.mark.parametrize('name', MODELS)
def test_features_only(name, which):
    model = timm.create_model(name, features_only=True).eval()
    subnet = model.set_subnet(_subnet(model, which))
    channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
    assert len(channels) >= 3
    r = subnet.resolution
    with torch.no_grad():
        outs = model(torch.randn(1, 3, r, r))
    assert len(outs) == len(channels)
    for c, red, o in zip(channels, reductions, outs):
        assert o.shape[1] == c
        assert o.shape[2] == -(-r // red)
    assert resolve_data_config(model=model)['input_size'] == (3, r, r)


@pytest.mark.parametrize('name', MODELS)
def test_forward_intermediates_follow_the_subnet(name):
    model = timm.create_model(name).eval()
    model.set_subnet(model.space.min_subnet())
    r = model.active_subnet.resolution
    x = torch.randn(1, 3, r, r)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
    info = timm.models.FeatureInfo(model.feature_info, len(model.feature_info))
    assert [t.shape[1] for t in inter] == info.channels()


@pytest.mark.parametrize('name', MODELS)
def test_forward_resizes_input_to_active_resolution(name):
    model = timm.create_model(name).eval()
    subnet = model.set_subnet(model.space.sample(rng=3))
    r = subnet.resolution
    assert resolve_data_config(model=model)['input_size'] == (3, r, r)
    x = torch.randn(2, 3, 224, 224) if r != 224 else torch.randn(2, 3, 160, 160)
    resized = F.interpolate(x, size=(r, r), mode='bilinear', align_corners=False, antialias=True)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(resized))
        assert model.forward_features(resized).shape[-1] == -(-r // 32)


@pytest.mark.parametrize('name', MODELS)
def test_set_subnet_bad_input_changes_nothing(name):
    model = timm.create_model(name, device='meta')
    before = model.set_subnet(model.space.sample(rng=1))
    top = model.space.max_subnet()
    bad = [
        (Subnet(top.resolution, top.widths[:-1]), 'groups'),
        (Subnet(top.resolution, top.widths[:-1] + (top.widths[-1] + 8,)), model.space.group_names[-1]),
        (Subnet(top.resolution + 8, top.widths), 'resolution'),
        (Subnet(top.resolution, (top.widths[0] - 1,) + top.widths[1:]), model.space.group_names[0]),
    ]
    for subnet, words in bad:
        with pytest.raises(ValueError, match=words):
            model.set_subnet(subnet)
        assert model.active_subnet == before
    with pytest.raises(ValueError, match='integer'):
        model.set_subnet(Subnet(224.0, top.widths))


def test_space_kwargs():
    model = timm.create_model('pss_mobilenetv1', width_range=(0.5, 1.0), resolution_range=(96, 160, 32),
                              device='meta')
    assert model.space.resolutions == (96, 128, 160)
    assert model.space.width_choices[0] == (16, 24, 32)
    assert model.active_subnet == model.space.max_subnet()
    assert model.pretrained_cfg['input_size'] == (3, 160, 160)
    with pytest.raises(ValueError, match='at most 1.0'):
        timm.create_model('pss_mobilenetv1', width_range=(0.5, 1.5), device='meta')
    with pytest.raises(ValueError, match='not groups of this model'):
        timm.create_model('pss_mobilenetv1', fixed_groups=('nope',), device='meta')


def test_find_supernet_through_wrappers():
    from timm.utils import ModelEmaV3
    model = timm.create_model('pss_mobilenetv2')
    assert timm_pss.find_supernet(ModelEmaV3(model)) is not model  # the EMA copy is its own supernet
    assert timm_pss.find_supernet(ModelEmaV3(model)).space.group_names == model.space.group_names
    assert timm_pss.find_supernet(torch.nn.DataParallel(model)) is model
    assert timm_pss.find_supernet(torch.compile(model)) is model
    with pytest.raises(TypeError, match='not a timm_pss supernet'):
        timm_pss.find_supernet(torch.nn.Linear(2, 2))


def _fx_model(model, train=False):
    """The model traced by timm's FX feature extraction, as timm's own test_models.py does (final output node)."""
    from timm.layers import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names
    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                         param_shapes_constant=True)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    nodes = train_nodes if train else eval_nodes
    return create_feature_extractor(model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]],
                                    tracer_kwargs=tracer_kwargs), nodes[-1]


@pytest.mark.parametrize('name', MODELS)
def test_fx_and_torchscript_at_the_active_subnet(name):
    """timm's FX (forward, backward, FX then TorchScript) and TorchScript checks, at a middle subnet and an input of
    another size: traced and scripted models run the subnet that was active when they were made, resize included."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=7, resolution_range=(64, 96, 32)).eval()
    space = model.space
    subnet = Subnet(64, tuple(c[len(c) // 2] for c in space.width_choices))
    model.set_subnet(subnet)
    x = torch.randn(2, 3, 80, 80)
    with torch.no_grad():
        expected = model(x)
    assert expected.shape == (2, 7)

    fx, node = _fx_model(model)
    with torch.no_grad():
        torch.testing.assert_close(fx(x)[node], expected)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), expected)
    fx_scripted = torch.jit.script(_fx_model(model)[0])
    with torch.no_grad():
        torch.testing.assert_close(fx_scripted(x)[node], expected)

    # switching the supernet afterwards leaves the scripted subnet as it was (weights stay shared)
    model.set_subnet(space.max_subnet())
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), expected)
        assert model(x).shape == expected.shape and not torch.equal(model(x), expected)

    model.set_subnet(subnet)
    model.train()
    fx_train, train_node = _fx_model(model, train=True)
    fx_train(x)[train_node].mean().backward()
    used = [p for p in model.parameters() if p.grad is not None]
    assert used and all(torch.isfinite(p.grad).all() for p in used)
