import pytest
import torch

from pdiff.core.config import AEConfig, DDPMConfig
from pdiff.generator.nets import Denoiser, ParamAutoencoder, timestep_embedding


@pytest.mark.parametrize("num_params", [10, 1546, 4097])
def test_autoencoder_shapes_for_any_vector_length(num_params):
    cfg = AEConfig(channels=[8, 16], fold=16, latent_channels=6)
    ae = ParamAutoencoder(num_params, cfg)
    x = torch.randn(3, num_params)
    z = ae.encode(x)
    assert z.shape == (3, *ae.latent_shape) and ae.latent_shape == (6, ae.length // 4)
    assert ae.length * ae.fold >= num_params and ae.length % 4 == 0  # padded to a multiple of the two halvings
    assert ae.decode(z).shape == (3, num_params)


def test_autoencoder_needs_a_resolved_fold():
    with pytest.raises(ValueError, match="fold must be resolved"):
        ParamAutoencoder(100, AEConfig(fold=0))


def test_autoencoder_can_memorise_a_few_vectors():
    torch.manual_seed(0)
    x = torch.randn(4, 200)
    ae = ParamAutoencoder(200, AEConfig(channels=[16, 32], fold=8))
    opt = torch.optim.Adam(ae.parameters(), lr=3e-3)
    first = None
    for _ in range(300):
        loss = torch.nn.functional.mse_loss(ae.decode(ae.encode(x)), x)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first  # the decoder depends on its input: it is not stuck at the mean


def test_denoiser_starts_at_zero_and_keeps_the_latent_shape():
    net = Denoiser((4, 13), DDPMConfig(channels=32, blocks=2))
    x = torch.randn(5, 4, 13)
    out = net(x, torch.tensor([0, 10, 100, 500, 999]))
    assert out.shape == x.shape and torch.count_nonzero(out) == 0  # zero-initialised output layer


def test_timestep_embedding_tells_timesteps_apart():
    emb = timestep_embedding(torch.tensor([0, 1, 500, 999]), 32)
    assert emb.shape == (4, 32)
    assert torch.cdist(emb, emb).add(torch.eye(4) * 1e9).min() > 0.1
