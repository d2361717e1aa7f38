"""The networks of MURD (Liu & Yap, Communications Engineering 2024), a StarGAN-v2-like multi-site harmonizer.

Every image module takes channels-first slice batches ``(B, C, H, W)`` float32 with ``C`` the input
channels (every contrast with its neighbour slices); ``H`` and ``W`` must be multiples of 4 (the
content encoder halves them twice).

- :class:`ContentEncoder`: 7x7 convolution (``base``), two stride-2 4x4 convolutions (``2 base``,
  ``4 base``), ``n_res`` residual blocks, instance normalisation throughout: ``(B, C, H, W) ->
  (B, 4 base, H/4, W/4)``, the site-free anatomy. Published: ``base`` 64 (64, 128, 256), 4 blocks.
- :class:`StyleEncoder`: strided 3x3 convolutions, global average pooling, one linear head per
  site: ``(B, C, H, W) -> (B, n_sites, style_dim)`` (published ``style_dim`` 64).
- :class:`MappingNetwork`: ``n_layers`` shared fully connected layers (ReLU) from a ``latent_dim``
  noise vector, one linear head per site: ``(B, latent_dim) -> (B, n_sites, style_dim)``
  (published: 16-d noise, 6 layers of 128).

The style encoder and the mapping network start from He initialisation (:func:`he_init`: Kaiming-normal
weights for a fan-in and ReLU, zero biases; StarGAN v2's code initialises all its networks so, here only
these two: with it everywhere the discriminator's loss rose to 5-15 within 60 steps). With PyTorch's
default initialisation the variance of a signal falls about threefold per layer: through the mapping
network's 7 layers the codes of two noise vectors came out about 0.002 apart for codes of about 0.05
(per entry), and the style encoder's codes of different slices about 0.0004 apart, so the generator
ignored the style (after 60 training steps on a small cohort, one content code decoded with two noise
vectors' codes gave slices 0.04-0.07 % apart, relative to the slice's mean intensity; with He
initialisation 13-99 %, three seeds). The mapping network's learning rate is 1/100 of the others'
(published), so it stays close to its initialisation.
- :class:`Generator`: the content code and a style code tiled over the content grid: ``n_res``
  residual blocks, each fed the concatenation of its input with the tiled style, then two nearest
  2x upsamplings with 5x5 convolutions (``2 base``, ``base``) and a 7x7 output convolution:
  ``(B, 4 base, H/4, W/4), (B, style_dim) -> (B, C, H, W)``.
- The discriminator is :class:`surfharm.models.image2d.PatchDiscriminator` with one score map per
  site (``n_classes = n_sites``).

:func:`pick` selects each sample's site head from a ``(B, n_sites, ...)`` output.
"""
from __future__ import annotations

import torch
from torch import nn


def he_init(module: nn.Module) -> None:
    """He initialisation of a convolution or linear layer (Kaiming-normal, fan-in, ReLU gain; zero bias);
    other modules are left as they are. Use as ``network.apply(he_init)``."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def pick(out: torch.Tensor, sites: torch.Tensor) -> torch.Tensor:
    """Row ``b`` of ``out`` (B, n_sites, ...) at site ``sites[b]``: (B, ...)."""
    return out[torch.arange(out.shape[0], device=out.device), sites]


class ResBlock(nn.Module):
    """``x + conv(relu(norm(conv(x))))``-style residual block (3x3, instance norm): ``(B, c, H, W)`` kept."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.InstanceNorm2d(channels, affine=True), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1), nn.InstanceNorm2d(channels, affine=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ContentEncoder(nn.Module):
    """Site-free content code: ``(B, in, H, W) -> (B, 4 base, H/4, W/4)`` (see the module docstring)."""

    def __init__(self, in_channels: int, base_channels: int = 64, n_res: int = 4):
        super().__init__()
        b = int(base_channels)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, b, 7, padding=3), nn.InstanceNorm2d(b, affine=True),
                                   nn.ReLU()]
        for c_in, c_out in ((b, 2 * b), (2 * b, 4 * b)):
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.InstanceNorm2d(c_out, affine=True),
                       nn.ReLU()]
        layers += [ResBlock(4 * b) for _ in range(int(n_res))]
        self.net = nn.Sequential(*layers)
        self.out_channels = 4 * b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 4 or x.shape[-2] % 4:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not a multiple of 4; pad the slices "
                             "(slice_geometry(depth=2))")
        return self.net(x)


class StyleEncoder(nn.Module):
    """Per-site style codes of an image: ``(B, in, H, W) -> (B, n_sites, style_dim)``.

    A 3x3 convolution (``base``), ``n_down`` strided 3x3 convolutions (channels doubled, capped at
    ``16 base``) with LeakyReLU(0.2), global average pooling, then one linear head per site.
    """

    def __init__(self, in_channels: int, n_sites: int, style_dim: int = 64, base_channels: int = 16,
                 n_down: int = 4):
        super().__init__()
        ch = int(base_channels)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ch, 3, padding=1)]
        for _ in range(int(n_down)):
            out = min(2 * ch, 16 * int(base_channels))
            layers += [nn.LeakyReLU(0.2), nn.Conv2d(ch, out, 3, stride=2, padding=1)]
            ch = out
        layers.append(nn.LeakyReLU(0.2))
        self.net = nn.Sequential(*layers)
        self.heads = nn.ModuleList(nn.Linear(ch, int(style_dim)) for _ in range(int(n_sites)))
        self.apply(he_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.net(x).mean(dim=(2, 3))
        return torch.stack([head(h) for head in self.heads], dim=1)


class MappingNetwork(nn.Module):
    """Per-site style codes from noise: ``(B, latent_dim) -> (B, n_sites, style_dim)`` (module docstring)."""

    def __init__(self, n_sites: int, latent_dim: int = 16, hidden: int = 128, n_layers: int = 6,
                 style_dim: int = 64):
        super().__init__()
        layers: list[nn.Module] = []
        width = int(latent_dim)
        for _ in range(int(n_layers)):
            layers += [nn.Linear(width, int(hidden)), nn.ReLU()]
            width = int(hidden)
        self.shared = nn.Sequential(*layers)
        self.heads = nn.ModuleList(nn.Linear(width, int(style_dim)) for _ in range(int(n_sites)))
        self.apply(he_init)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.shared(z)
        return torch.stack([head(h) for head in self.heads], dim=1)


class StyleResBlock(nn.Module):
    """Residual block fed ``[x, tiled style]``: ``(B, c, h, w), (B, s) -> (B, c, h, w)`` (no normalisation,
    so the style can set the intensities)."""

    def __init__(self, channels: int, style_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels + style_dim, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels + style_dim, channels, 3, padding=1)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor, style_map: torch.Tensor) -> torch.Tensor:
        h = self.act(self.conv1(torch.cat([x, style_map], 1)))
        return x + self.conv2(torch.cat([h, style_map], 1))


class Generator(nn.Module):
    """Image from a content code and a style code: ``(B, 4 base, h, w), (B, style_dim) -> (B, out, 4h, 4w)``."""

    def __init__(self, out_channels: int, base_channels: int = 64, style_dim: int = 64, n_res: int = 4):
        super().__init__()
        b = int(base_channels)
        self.blocks = nn.ModuleList(StyleResBlock(4 * b, int(style_dim)) for _ in range(int(n_res)))
        self.up = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(4 * b, 2 * b, 5, padding=2), nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(2 * b, b, 5, padding=2), nn.LeakyReLU(0.2),
            nn.Conv2d(b, int(out_channels), 7, padding=3))

    def forward(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        style_map = style[:, :, None, None].expand(-1, -1, *content.shape[2:])
        h = content
        for block in self.blocks:
            h = block(h, style_map)
        return self.up(h)


class ReferenceStyles(nn.Module):
    """Holds one reference style code per site, ``codes`` (n_sites, style_dim): a buffer, saved with the model."""

    def __init__(self, n_sites: int, style_dim: int):
        super().__init__()
        self.register_buffer("codes", torch.zeros(int(n_sites), int(style_dim)))


__all__ = ["ContentEncoder", "Generator", "MappingNetwork", "ReferenceStyles", "ResBlock", "StyleEncoder",
           "StyleResBlock", "he_init", "pick"]
