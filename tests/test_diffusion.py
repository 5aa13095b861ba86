import pytest
import torch

from pdiff.core.config import DDPMConfig
from pdiff.generator.diffusion import Diffusion
from pdiff.generator.training import train_denoiser


def test_schedule_sanity():
    d = Diffusion(1000, 1e-4, 2e-2)
    assert d.betas[0].item() == pytest.approx(1e-4) and d.betas[-1].item() == pytest.approx(2e-2)
    assert (d.alphas_cumprod[1:] < d.alphas_cumprod[:-1]).all()  # strictly more noise at every step
    assert d.alphas_cumprod[-1].item() < 1e-4  # x_T is essentially pure noise
    x0, noise = torch.ones(2, 3), torch.zeros(2, 3)
    xt = d.q_sample(x0, torch.tensor([0, 999]), noise)
    assert xt[0, 0].item() == pytest.approx((1 - 1e-4) ** 0.5, rel=1e-6)
    assert xt[1, 0].item() < 0.01


def test_each_sample_gets_its_own_timestep():
    seen = []

    def spy(x, t):
        seen.append(t.clone())
        return torch.zeros_like(x)

    Diffusion().loss(spy, torch.zeros(256, 2, 3), torch.Generator().manual_seed(0))
    t = seen[0]
    assert t.shape == (256,) and len(t.unique()) > 200  # not one shared timestep


def test_sampler_timesteps():
    d = Diffusion(1000)
    ddpm = list(d.timesteps("ddpm"))
    assert len(ddpm) == 1000 and ddpm[0] == (999, 998) and ddpm[-1] == (0, -1)
    ddim = list(d.timesteps("ddim", 50))
    assert len(ddim) == 50 and ddim[0][0] == 999 and ddim[-1] == (0, -1)
    assert all(a > b for a, b in ddim[:-1])
    with pytest.raises(ValueError, match="DDIM steps"):
        list(d.timesteps("ddim", 0))
    with pytest.raises(ValueError, match="unknown sampler"):
        list(d.timesteps("euler"))


@pytest.fixture(scope="module")
def two_mode_denoiser():
    """A small denoiser trained briefly on a 1D two-mode distribution: +-2 with noise 0.1."""
    g = torch.Generator().manual_seed(0)
    signs = torch.where(torch.rand(512, generator=g) < 0.5, -1.0, 1.0)
    data = (2 * signs + 0.1 * torch.randn(512, generator=g)).view(512, 1, 1).repeat(1, 1, 4)
    cfg = DDPMConfig(channels=32, blocks=2, steps=1500, lr=2e-3, batch_size=128, ema_decay=0.99)
    ema, losses = train_denoiser(data, cfg, torch.Generator().manual_seed(1))
    return ema, cfg, losses


@pytest.mark.slow  # trains the toy: 1,500 steps
@pytest.mark.parametrize("sampler,steps", [("ddpm", None), ("ddim", 50)])
def test_reverse_chain_finds_both_modes(two_mode_denoiser, sampler, steps):
    ema, cfg, losses = two_mode_denoiser
    assert sum(losses[-100:]) / 100 < sum(losses[:100]) / 100  # it learned
    d = Diffusion(cfg.timesteps, cfg.beta_start, cfg.beta_end)
    x = d.sample(ema, (400, 1, 4), sampler, steps, torch.Generator().manual_seed(2)).mean(dim=(1, 2))
    near = (x - 2).abs().lt(0.5) | (x + 2).abs().lt(0.5)
    assert near.float().mean() > 0.9, "samples should land near a mode"
    share_positive = (x > 0).float().mean().item()
    assert 0.25 < share_positive < 0.75, "both modes should be found"


def test_same_seed_same_samples():
    from pdiff.generator.nets import Denoiser

    cfg = DDPMConfig(channels=32, blocks=2)
    torch.manual_seed(0)
    ema = Denoiser((1, 4), cfg).eval()  # seeded sampling needs no trained network
    d = Diffusion(cfg.timesteps, cfg.beta_start, cfg.beta_end)
    a = d.sample(ema, (8, 1, 4), "ddim", 20, torch.Generator().manual_seed(5))
    b = d.sample(ema, (8, 1, 4), "ddim", 20, torch.Generator().manual_seed(5))
    c = d.sample(ema, (8, 1, 4), "ddim", 20, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("sampler,steps", [("ddpm", None), ("ddim", 100)])
def test_exact_noise_prediction_recovers_a_gaussian(sampler, steps):
    # data N(0, s^2): the exact epsilon predictor is sqrt(1 - abar) x_t / (abar s^2 + 1 - abar);
    # a correct reverse chain driven by it must return samples with standard deviation s
    d, s = Diffusion(1000), 0.3

    def exact(x, t):
        abar = d.alphas_cumprod[t].float().view(-1, 1, 1)
        return (1 - abar).sqrt() * x / (abar * s * s + 1 - abar)

    x = d.sample(exact, (4000, 1, 2), sampler, steps, torch.Generator().manual_seed(0))
    assert x.std().item() == pytest.approx(s, rel=0.05)
    assert abs(x.mean().item()) < 0.02
