"""Search spaces: the subnet type, width choices, exact FLOPs (scalar and vectorised), sampling, bad input."""
import json

import numpy as np
import pytest
import timm

import timm_pss  # noqa: F401  (registers the models)
from timm_pss import Subnet, SubnetBatch
from timm_pss.spaces import resolution_choices, width_choices

MODELS = ['pss_mobilenetv1', 'pss_mobilenetv2', 'pss_resnet50']


@pytest.fixture(scope='module', params=MODELS)
def space(request):
    return timm.create_model(request.param, device='meta').space


def test_subnet_is_hashable_and_json_round_trips():
    a = Subnet(160, (24, 48, 96))
    b = Subnet(np.int64(160), [np.int32(24), 48, 96])
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert isinstance(b.widths, tuple) and all(type(w) is int for w in b.widths)
    assert Subnet.from_json(a.to_json()) == a
    assert json.loads(a.to_json()) == {'resolution': 160, 'widths': [24, 48, 96]}
    assert Subnet.from_dict(a.to_dict()) == a


@pytest.mark.parametrize('bad', [
    dict(resolution=160.0, widths=(8,)),
    dict(resolution=160, widths=(8.5,)),
    dict(resolution=True, widths=(8,)),
    dict(resolution='160', widths=(8,)),
    dict(resolution=160, widths='8'),
    dict(resolution=160, widths=8),
])
def test_subnet_refuses_non_integers(bad):
    with pytest.raises(ValueError, match='integer'):
        Subnet(**bad)


def test_subnet_from_dict_refuses_other_keys():
    with pytest.raises(ValueError, match='exactly the keys'):
        Subnet.from_dict({'resolution': 160, 'widths': [8], 'extra': 1})


def test_width_choices_follow_make_divisible():
    # 0.75..1.0 of 32 rounds to 24 or 32; of 1024, every multiple of 8 from 768 to 1024
    assert width_choices(32, (0.75, 1.0)) == (24, 32)
    assert width_choices(1024, (0.75, 1.0)) == tuple(range(768, 1025, 8))
    assert width_choices(64, (0.25, 1.0))[0] == 16
    with pytest.raises(ValueError, match='0 < lo <= hi'):
        width_choices(32, (1.0, 0.5))
    assert resolution_choices((128, 224, 8)) == tuple(range(128, 225, 8))
    with pytest.raises(ValueError, match='step'):
        resolution_choices((128, 224, 7))


def test_reference_flops():
    """The reference's figures (MACs of conv + linear + global pool): MobileNetV1 max 568.79M, min (0.75, 128px)
    106.78M; MobileNetV2 300.84M / 69.15M."""
    v1 = timm.create_model('pss_mobilenetv1', device='meta').space
    v2 = timm.create_model('pss_mobilenetv2', device='meta').space
    assert round(v1.flops(v1.max_subnet()) / 1e6, 2) == 568.79
    assert round(v1.flops(v1.min_subnet()) / 1e6, 2) == 106.78
    assert round(v2.flops(v2.max_subnet()) / 1e6, 2) == 300.84
    assert round(v2.flops(v2.min_subnet()) / 1e6, 2) == 69.15
    assert v2.width_choices[v2.group_names.index('conv_head')] == (1280,)


def test_space_groups_as_designed():
    v1 = timm.create_model('pss_mobilenetv1', device='meta').space
    assert v1.max_widths == (32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)
    v2 = timm.create_model('pss_mobilenetv2', device='meta').space
    assert v2.group_names == ('conv_stem',) + tuple(f'blocks.{i}' for i in range(7)) + ('conv_head',)
    assert v2.max_widths == (32, 16, 24, 32, 64, 96, 160, 320, 1280)
    r50 = timm.create_model('pss_resnet50', device='meta').space
    assert r50.num_groups == 1 + 4 + 16
    assert {'conv1', 'layer1', 'layer4', 'layer1.0', 'layer4.2'} <= set(r50.group_names)
    assert r50.resolutions == tuple(range(128, 225, 8))


def test_flops_many_equals_scalar_flops(space):
    batch = space.sample_many(200, rng=0)
    vec = space.flops_many(batch)
    assert vec.dtype == np.int64
    assert list(vec) == [space.flops(s) for s in batch.subnets()]
    assert list(space.flops_many(batch.resolutions, batch.widths)) == list(vec)


def test_flops_grow_with_width_and_resolution(space):
    top = space.max_subnet()
    smaller_res = Subnet(space.resolutions[-2], top.widths)
    narrower = Subnet(top.resolution, (top.widths[0],) + tuple(c[0] for c in space.width_choices[1:]))
    assert space.flops(smaller_res) < space.flops(top)
    assert space.flops(narrower) < space.flops(top)


def test_sample_is_deterministic_and_in_space(space):
    a = space.sample_many(50, rng=123)
    b = space.sample_many(50, rng=np.random.default_rng(123))
    assert np.array_equal(a.resolutions, b.resolutions) and np.array_equal(a.widths, b.widths)
    for s in a.subnets():
        space.validate(s)
    assert space.sample(rng=5) == space.sample(rng=5)
    assert len({space.sample(rng=i) for i in range(20)}) > 15


def test_sample_with_flops_range(space):
    f_min, f_max = space.flops(space.min_subnet()), space.flops(space.max_subnet())
    step = (f_max - f_min) / 10
    for lo in (f_min, f_min + 4 * step, f_max - step):
        batch = space.sample_many(20, rng=0, flops_range=(lo, lo + step))
        f = space.flops_many(batch)
        assert len(batch) == 20 and ((f >= lo) & (f < lo + step)).all()
        assert len({tuple(w) for w in batch.widths}) > 10  # not collapsed onto a few configurations
    one = space.sample(rng=1, flops_range=(f_max - step, f_max + 1))
    assert f_max - step <= space.flops(one) <= f_max


def test_sample_flops_range_errors(space):
    f_max = space.flops(space.max_subnet())
    with pytest.raises(ValueError, match='holds no subnet'):
        space.sample(rng=0, flops_range=(f_max + 1, f_max + 10))
    with pytest.raises(ValueError, match='lo < hi'):
        space.sample(rng=0, flops_range=(10, 5))


def test_validate_names_group_and_allowed_values():
    space = timm.create_model('pss_mobilenetv1', device='meta').space
    top = space.max_subnet()
    with pytest.raises(ValueError, match=r'has 13 widths, the space has 14 groups'):
        space.validate(Subnet(224, top.widths[:-1]))
    with pytest.raises(ValueError, match=r"width 40 for group 'blocks.0.0' .* allowed: 48..64 in steps of 8"):
        space.validate(Subnet(224, (32, 40) + top.widths[2:]))
    with pytest.raises(ValueError, match=r'resolution 232 .* allowed: 128..224 in steps of 8'):
        space.validate(Subnet(232, top.widths))
    with pytest.raises(ValueError, match='Subnet'):
        space.validate((224, top.widths))


def test_subnet_batch_round_trip(space):
    subnets = [space.sample(rng=i) for i in range(5)]
    batch = SubnetBatch.from_subnets(subnets)
    assert len(batch) == 5 and batch.subnets() == subnets


def test_every_reference_bucket_is_reachable():
    """The reference's 30k-subnet map leaves MobileNetV1's 510..560M buckets empty; every bucket must be reachable."""
    space = timm.create_model('pss_mobilenetv1', device='meta').space
    rng = np.random.default_rng(0)
    for target in range(110, 571, 10):
        lo, hi = (target - 5) * 1e6, (target + 5) * 1e6
        f = space.flops_many(space.sample_many(8, rng=rng, flops_range=(lo, hi)))
        assert ((f >= lo) & (f < hi)).all(), target


def test_ranges_outside_the_bank_use_the_walk():
    space = timm.create_model('pss_resnet50', device='meta').space
    space.bank_size = 16  # a bank too small to cover narrow ranges: the random walk must find them
    f_min, f_max = space.flops_span
    for frac in (0.13, 0.51, 0.87):
        lo = f_min + frac * (f_max - f_min)
        batch = space.sample_many(4, rng=1, flops_range=(lo, lo + 2e6))
        f = space.flops_many(batch)
        assert ((f >= lo) & (f < lo + 2e6)).all()
    with pytest.raises(ValueError, match='too narrow'):
        space.sample(rng=0, flops_range=(f_min + 1, f_min + 2))


def test_stratified_subnets_spread_over_the_flops_span():
    from timm_pss.spaces import stratified_subnets
    space = timm.create_model('pss_mobilenetv2', device='meta').space
    subnets = stratified_subnets(space, 9, rng=0)
    assert len(subnets) == 9 and len(set(subnets)) == 9
    assert subnets[0] == space.min_subnet() and subnets[-1] == space.max_subnet()
    f = space.flops_many(SubnetBatch.from_subnets(subnets)).astype(np.float64)
    targets = np.linspace(*space.flops_span, 9)
    assert (np.diff(f) >= 0).all() and (np.abs(f - targets) < 0.01 * (targets[-1] - targets[0])).all()
    assert stratified_subnets(space, 9, rng=0) == subnets and stratified_subnets(space, 9, rng=1) != subnets
    assert stratified_subnets(space, 0) == [] and stratified_subnets(space, 1, rng=0) == [space.min_subnet()]
    for bad in (-1, 13):
        with pytest.raises(ValueError, match='n must be between 0 and candidates \\+ 2 = 12'):
            stratified_subnets(space, bad, candidates=10)
