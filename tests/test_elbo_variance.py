"""The continuous-time bound's estimator: importance-sampled noise levels, stratified rounds and a control variate.

On the exact oracle the default estimator reaches its target standard error (0.05 nats per dimension per
data point), the standard error it reports is the spread of independent repeats (not an understatement),
and its mean is the one of the plain estimator uniform in the schedule's time, which on a VP schedule has
a spread tens of times larger.
"""


import pytest
import torch

from diffusionlens.likelihood import vdm_vlb
from diffusionlens.oracle import ring, standard_cases
from diffusionlens.processes import VE, VP

pytestmark = pytest.mark.usefixtures("one_thread")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _rms(v):
    return float(v.pow(2).mean().sqrt())


@pytest.mark.parametrize("case", ["ring2d", "mix16"])
def test_default_reaches_its_target_and_reports_an_honest_standard_error(case):
    o = ring() if case == "ring2d" else standard_cases()[case]
    x0 = o.sample(12, _gen(1))
    d = x0[0].numel()
    reps = [vdm_vlb(o.denoise, x0, sigma_min=0.002, sigma_max=80.0, generator=_gen(10 + i)) for i in range(4)]
    for r in reps:
        assert _rms(r.stderr) / d < 0.05
    spread = torch.stack([r.total for r in reps]).std(0)  # 3 dof per point, 36 pooled: within ~±25 %
    ratio = _rms(spread) / _rms(torch.stack([r.stderr for r in reps]).pow(2).mean(0).sqrt())
    assert 0.6 < ratio < 1.5, ratio


def test_same_mean_as_the_schedule_estimator_with_far_less_spread_than_vp():
    o = standard_cases()["mix16"]
    x0 = o.sample(16, _gen(2))
    new = vdm_vlb(o.denoise, x0, sigma_min=0.002, sigma_max=80.0, generator=_gen(3))
    loglin = vdm_vlb(o.denoise, x0, sigma_min=0.002, sigma_max=80.0, process=VE(0.002, 80.0), samples=64, rounds=8,
                     control_variate=False, generator=_gen(4))
    diff = new.total - loglin.total
    se = torch.sqrt(new.stderr**2 + loglin.stderr**2)
    # paired per data point: the sum of squared z-scores is chi-square with 16 dof (99.9 % quantile 39)
    assert float(((diff / se) ** 2).sum()) < 39.3
    # the measurement: one round of 16 uniform-in-t draws on VP, against the default
    vp = [vdm_vlb(o.denoise, x0, sigma_min=0.002, sigma_max=80.0, process=VP("linear"), control_variate=False,
                  rounds=1, generator=_gen(20 + i)).total for i in range(8)]
    assert _rms(torch.stack(vp).std(0)) > 10 * _rms(new.stderr)


def test_bad_arguments():
    o = ring()
    x0 = o.sample(2, _gen(0))
    for kw, match in [({"data_var": 0.0}, "data_var"), ({"rounds": 0}, "rounds"), ({"target": -1.0}, "target")]:
        with pytest.raises(ValueError, match=match):
            vdm_vlb(o.denoise, x0, sigma_min=0.01, sigma_max=1.0, **kw)
