"""A tour of the pss_* supernets: spaces, FLOPs, switching subnets, exporting a static timm model."""
import time

import torch
import timm

import timm_pss

for name in timm.list_models('pss_*'):
    model = timm.create_model(name).eval()
    space = model.space
    print(f'\n{name}: {space}')
    print(f'  groups: {", ".join(space.group_names)}')
    for label, subnet in [('max', space.max_subnet()), ('random', space.sample(rng=0)), ('min', space.min_subnet())]:
        model.set_subnet(subnet)
        exported = timm_pss.export_subnet(model)
        x = torch.randn(1, 3, subnet.resolution, subnet.resolution)
        with torch.no_grad():
            t0 = time.perf_counter()
            same = torch.allclose(model(x), exported(x), atol=1e-5)
            ms = (time.perf_counter() - t0) * 1e3
        n_params = sum(p.numel() for p in exported.parameters()) / 1e6
        print(f'  {label:>6}: {subnet.resolution}px {space.flops(subnet) / 1e6:8.2f} MMACs, exported '
              f'{type(exported).__name__} with {n_params:.2f}M params, outputs equal: {same} ({ms:.0f} ms)')
