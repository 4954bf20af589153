"""Slimmable layers equal a narrow dense layer holding the first k channels, and share the full weights."""
import copy

import pytest
import torch
from torch import nn
from timm.layers import BatchNormAct2d

from timm_pss.conversion import apply_widths, convert_to_slimmable
from timm_pss.slimmable import (
    SlimBatchNorm2d, SlimBatchNormAct2d, SlimConv2d, SlimLinear, INFERENCE_CACHE_SUBNETS, cut_weight,
    inference_cache_bytes,
)
from timm_pss.spaces import Channels


def _slim(module, in_rule, out_rule, widths):
    model = convert_to_slimmable(nn.Sequential(module))
    model[0].set_rules(in_rule, out_rule)
    apply_widths(model, widths)
    return model[0]


def test_conv_runs_on_first_channels_without_copies():
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=True)
    weight = conv.weight
    slim = _slim(conv, Channels(0), Channels(1, 2), widths=(8, 12))
    assert isinstance(slim, SlimConv2d) and slim.weight is weight and (slim.active_in, slim.active_out) == (8, 24)
    narrow = nn.Conv2d(8, 24, 3, stride=2, padding=1)
    narrow.weight.data, narrow.bias.data = weight[:24, :8].clone(), conv.bias[:24].clone()
    x = torch.randn(2, 8, 9, 9)
    torch.testing.assert_close(slim(x), narrow(x))


def test_depthwise_conv_follows_its_input():
    conv = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
    slim = _slim(conv, Channels(0), Channels(0), widths=(8,))
    narrow = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
    narrow.weight.data = conv.weight[:8].clone()
    x = torch.randn(1, 8, 5, 5)
    torch.testing.assert_close(slim(x), narrow(x))


@pytest.mark.parametrize('cls', [nn.BatchNorm2d, BatchNormAct2d])
def test_batch_norm_slices_and_updates_only_active_stats(cls):
    bn = cls(16)
    slim = _slim(bn, Channels(0), Channels(0), widths=(8,))
    assert isinstance(slim, (SlimBatchNorm2d, SlimBatchNormAct2d))
    narrow = cls(8)
    x = torch.randn(4, 8, 3, 3) * 3 + 1
    slim.train(), narrow.train()
    torch.testing.assert_close(slim(x), narrow(x))
    torch.testing.assert_close(bn.running_mean[:8], narrow.running_mean)
    torch.testing.assert_close(bn.running_var[:8], narrow.running_var)
    assert torch.equal(bn.running_mean[8:], torch.zeros(8)) and torch.equal(bn.running_var[8:], torch.ones(8))
    slim.eval(), narrow.eval()
    torch.testing.assert_close(slim(x), narrow(x))


def test_batch_norm_act_keeps_activation():
    bn = BatchNormAct2d(8, act_layer=nn.ReLU)
    slim = _slim(bn, Channels(0), Channels(0), widths=(4,)).eval()
    assert (slim(torch.randn(2, 4, 3, 3)) >= 0).all()


def test_linear_reads_first_features():
    fc = nn.Linear(32, 10)
    slim = _slim(fc, Channels(0), None, widths=(20,))
    assert isinstance(slim, SlimLinear) and slim.active_out == 10
    x = torch.randn(3, 20)
    torch.testing.assert_close(slim(x), x @ fc.weight[:, :20].T + fc.bias)


def test_rules_wider_than_layer_are_refused():
    with pytest.raises(ValueError, match='cannot run at'):
        _slim(nn.Conv2d(8, 8, 1), Channels(0), Channels(0), widths=(16,))


def test_unsupported_layers_are_refused():
    with pytest.raises(TypeError, match='not depthwise'):
        convert_to_slimmable(nn.Sequential(nn.Conv2d(8, 16, 3, groups=2)))
    with pytest.raises(TypeError, match='no slimmable form'):
        convert_to_slimmable(nn.Sequential(nn.LayerNorm(8)))
    with pytest.raises(TypeError, match='padding'):
        convert_to_slimmable(nn.Sequential(nn.Conv2d(8, 8, 3, padding='same')))


def test_state_dict_keys_unchanged_by_conversion():
    dense = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8, 2))
    keys = {k: v.shape for k, v in dense.state_dict().items()}
    params = list(dense.parameters())
    convert_to_slimmable(dense)
    assert {k: v.shape for k, v in dense.state_dict().items()} == keys
    assert all(a is b for a, b in zip(params, dense.parameters()))


# ---------------------------------------------------------------------------------------------- inference cache

def _cut_model(seed=0):
    """conv (input channels cut: a non-contiguous slice) -> BN -> pool -> linear, at widths (12, 24)."""
    torch.manual_seed(seed)
    model = convert_to_slimmable(nn.Sequential(
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 5)))
    model[0].set_rules(Channels(0), Channels(1))
    model[1].set_rules(Channels(1), Channels(1))
    model[4].set_rules(Channels(1), None)
    with torch.no_grad():
        model[1].running_mean.normal_(), model[1].running_var.uniform_(0.5, 2)
    apply_widths(model, (12, 24))
    return model.eval()


def _uncached(model, x):
    """The output of the plain slicing forward (grad enabled: the cache is never served)."""
    with torch.enable_grad():
        return model(x).detach()


def _cached(model, x):
    with torch.no_grad():
        return model(x)


def _sgd_step(model):
    x = torch.randn(2, model[0].active_in, 6, 6)
    model(x).square().mean().backward()
    torch.optim.SGD(model.parameters(), lr=1.0).step()


def _load_other(model, assign=False):
    model.load_state_dict(_cut_model(seed=1).state_dict(), assign=assign)


def _write_through_data_in_train_mode(model):
    model.train()
    model[0].weight.data.mul_(2)  # no version bump: only the train() / eval() drop protects the cache
    model.eval()


CACHE_EVENTS = {
    'width switch': lambda m: apply_widths(m, (8, 28)),
    'optimizer step': _sgd_step,
    'load_state_dict': _load_other,
    'load_state_dict assign': lambda m: _load_other(m, assign=True),
    'train/eval': _write_through_data_in_train_mode,
    'to float64': lambda m: m.double(),
    # what torch.func.functional_call and parametrizations do: write the module's dicts directly
    'buffer swapped in its dict': lambda m: m[1]._buffers.__setitem__('running_mean', torch.randn(32)),
    'parameter swapped in its dict': lambda m: m[0]._parameters.__setitem__('bias', nn.Parameter(torch.randn(32))),
    'parameter set to None': lambda m: m[0]._parameters.__setitem__('bias', None),
}


def test_inference_cache_is_bitwise_the_slicing_forward_and_reused():
    model = _cut_model()
    x = torch.randn(2, 12, 6, 6)
    expected = _uncached(model, x)
    assert inference_cache_bytes(model) == 0
    assert torch.equal(_cached(model, x), expected)
    copies = inference_cache_bytes(model)
    # only the two input-cut weights are copied (conv 24x12x3x3, linear 5x24); BN and biases are views
    assert copies == 4 * (24 * 12 * 9 + 5 * 24)
    with torch.no_grad():
        first = model[0]._inference_params()[0]
        assert model[0]._inference_params()[0] is first and first.is_contiguous()
    assert torch.equal(_cached(model, x), expected) and inference_cache_bytes(model) == copies
    with torch.inference_mode():
        assert torch.equal(model(x), expected)
    clone = copy.deepcopy(model)  # as ModelEma does: the copy starts without the cache
    assert inference_cache_bytes(clone) == 0 and torch.equal(_cached(clone, x), expected)


@pytest.mark.parametrize('event', list(CACHE_EVENTS))
def test_inference_cache_is_never_served_stale(event):
    model = _cut_model()
    _cached(model, torch.randn(2, 12, 6, 6))
    assert inference_cache_bytes(model) > 0
    CACHE_EVENTS[event](model)
    dtype = next(model.parameters()).dtype
    x = torch.randn(2, model[0].active_in, 6, 6, dtype=dtype)
    assert torch.equal(_cached(model, x), _uncached(model, x))


def test_inference_cache_serves_functional_call_its_own_tensors():
    """torch.func.functional_call swaps tensors into the module for one call: that call, and the plain calls
    around it, each get the output of the tensors in place at the time."""
    model = _cut_model()
    x = torch.randn(2, 12, 6, 6)
    before = _cached(model, x)
    swapped = {'1.running_mean': torch.randn(32), '0.bias': torch.randn(32)}
    with torch.no_grad():
        through_call = torch.func.functional_call(model, swapped, (x,))
    reference = _cut_model()
    with torch.no_grad():
        reference[1].running_mean.copy_(swapped['1.running_mean']), reference[0].bias.copy_(swapped['0.bias'])
    assert torch.equal(through_call, _uncached(reference, x)) and not torch.equal(through_call, before)
    assert torch.equal(_cached(model, x), before)


def test_inference_cache_follows_the_budget_entry_statistics():
    model = _cut_model()
    bn = model[1]
    bn.set_budget_stats(torch.randn(2, 32), torch.rand(2, 32) + 0.5)
    x = torch.randn(2, 12, 6, 6)
    outputs = []
    for index in (0, 1):
        bn.select_budget_entry(index)
        outputs.append(_cached(model, x))
        assert torch.equal(outputs[-1], _uncached(model, x))
    assert not torch.equal(*outputs)


def test_grad_enabled_eval_forward_keeps_gradients_to_the_full_weights():
    model = _cut_model()
    x = torch.randn(2, 12, 6, 6)
    _cached(model, x)  # a cache exists; a grad-enabled call must not use its detached copies
    model(x).sum().backward()
    grad = model[0].weight.grad
    assert grad.shape == (32, 16, 3, 3) and grad[:24, :12].abs().sum() > 0
    assert not grad[24:].any() and not grad[:, 12:].any()


@pytest.mark.parametrize('shape,cut', [((32, 16, 3, 3), (24, 12)), ((32, 16, 3, 3), (24, 16)),
                                       ((32, 16, 3, 3), (32, 12)), ((32, 1, 3, 3), (20, 1)), ((5, 40), (5, 24))])
def test_cut_weight_equals_the_slicing_view_in_values_and_gradients(shape, cut):
    """The training path's weight cut is contiguous and has the view's values and full-size gradient."""
    torch.manual_seed(0)
    weight = torch.randn(shape, requires_grad=True)
    upstream = torch.randn(cut + shape[2:])
    view = weight[:cut[0], :cut[1]]
    (view * upstream).sum().backward()
    expected, weight.grad = weight.grad.clone(), None

    cut_tensor = cut_weight(weight, *cut)
    assert cut_tensor.is_contiguous() and torch.equal(cut_tensor, view)
    (cut_tensor * upstream).sum().backward()
    assert torch.equal(weight.grad, expected) and not weight.grad[cut[0]:].any()


def test_cut_weight_at_full_size_is_the_weight_itself():
    weight = torch.randn(8, 4, 3, 3, requires_grad=True)
    assert cut_weight(weight, 8, 4) is weight


def test_training_step_gradients_equal_a_narrow_dense_model():
    """A training step of the slimmable conv -> BN -> linear gives the narrow dense model's loss and gradients."""
    model = _cut_model(seed=1).train()
    narrow = nn.Sequential(nn.Conv2d(12, 24, 3, padding=1), nn.BatchNorm2d(24), nn.AdaptiveAvgPool2d(1),
                           nn.Flatten(), nn.Linear(24, 5)).train()
    with torch.no_grad():
        for dense_param, slim_param in zip(narrow.parameters(), model.parameters()):
            dense_param.copy_(slim_param[tuple(slice(0, n) for n in dense_param.shape)])
    x = torch.randn(3, 12, 6, 6)
    for net in (model, narrow):
        net(x).square().mean().backward()
    for dense_param, slim_param in zip(narrow.parameters(), model.parameters()):
        part = tuple(slice(0, n) for n in dense_param.shape)
        torch.testing.assert_close(slim_param.grad[part], dense_param.grad)
        outside = torch.ones_like(slim_param.grad, dtype=torch.bool)
        outside[part] = False
        assert not slim_param.grad[outside].any()


def test_inference_cache_keeps_a_few_width_settings_and_serves_them_again():
    model = _cut_model()
    x = torch.randn(2, 16, 6, 6)
    widths = [(12, 24), (8, 28), (16, 32), (4, 8), (10, 20)]  # one more than the layers keep
    copies = {}
    for w in widths[:INFERENCE_CACHE_SUBNETS]:
        apply_widths(model, w)
        _cached(model, x[:, :w[0]])
        with torch.no_grad():
            copies[w] = model[0]._inference_params()[0]
    apply_widths(model, widths[0])  # switching back serves the copy made before, not a new one
    with torch.no_grad():
        assert model[0]._inference_params()[0] is copies[widths[0]]
    assert torch.equal(_cached(model, x[:, :12]), _uncached(model, x[:, :12]))
    apply_widths(model, widths[-1])
    _cached(model, x[:, :10])
    assert len(model[0].__dict__['_inference_weight_cache']) == INFERENCE_CACHE_SUBNETS  # the oldest went


def test_bn_per_entry_statistics_set_select_clear():
    bn = _slim(nn.BatchNorm2d(8), Channels(0), Channels(0), widths=(6,)).eval()
    bn.running_mean.fill_(5.0)
    mean, var = torch.randn(3, 8, dtype=torch.float64), torch.rand(3, 8, dtype=torch.float64) + 0.5
    bn.select_budget_entry(1)
    bn.set_budget_stats(mean, var)  # new rows: no entry is selected any more
    assert bn.budget_index is None and bn.budget_running_mean.dtype == torch.float32
    assert set(bn.state_dict()) >= {'budget_running_mean', 'budget_running_var'}
    x = torch.randn(2, 6, 4, 4)
    with torch.no_grad():
        shared = bn(x)
        bn.select_budget_entry(2)
        expected = nn.functional.batch_norm(x, mean[2, :6].float(), var[2, :6].float(), bn.weight[:6], bn.bias[:6],
                                            False, 0.0, bn.eps)
        torch.testing.assert_close(bn(x), expected)
        assert not torch.allclose(bn(x), shared)
        bn.clear_budget_stats()
        assert bn.budget_index is None and bn.budget_running_mean is None and bn.budget_running_var is None
        assert not any(k.startswith('budget_') for k in bn.state_dict())
        torch.testing.assert_close(bn(x), shared)


def test_layers_print_their_active_and_full_channels():
    conv = _slim(nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False), Channels(0), Channels(1), widths=(24, 48))
    assert repr(conv) == ('SlimConv2d(in=24/32, out=48/64, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), '
                          'bias=False)')
    depthwise = _slim(nn.Conv2d(16, 16, 3, padding=1, groups=16), Channels(0), Channels(0), widths=(8,))
    assert 'in=8/16, out=8/16' in repr(depthwise) and 'groups=8/16' in repr(depthwise)
    linear = _slim(nn.Linear(64, 10), Channels(0), None, widths=(40,))
    assert repr(linear) == 'SlimLinear(in=40/64, out=10/10, bias=True)'
    bn = _slim(nn.BatchNorm2d(64), Channels(0), Channels(0), widths=(40,))
    assert repr(bn).startswith('SlimBatchNorm2d(channels=40/64, eps=1e-05') and 'budget_entry' not in repr(bn)
    bn.set_budget_stats(torch.zeros(2, 64), torch.ones(2, 64))
    bn.select_budget_entry(1)
    assert repr(bn).startswith('SlimBatchNorm2d(channels=40/64, budget_entry=1, eps=1e-05')
    bn_act = _slim(BatchNormAct2d(64), Channels(0), Channels(0), widths=(16,))
    assert repr(bn_act).startswith('SlimBatchNormAct2d(\n  channels=16/64, eps=1e-05')
