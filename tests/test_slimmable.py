"""Slimmable layers equal a narrow dense layer holding the first k channels, and share the full weights."""
import pytest
import torch
from torch import nn
from timm.layers import BatchNormAct2d

from timm_pss.slimmable import (
    SlimBatchNorm2d, SlimBatchNormAct2d, SlimConv2d, SlimLinear, apply_widths, convert_to_slimmable,
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
