"""2-D convolutional building blocks of the slice-based image harmonizers.

Every module takes channels-first image batches ``(B, C, H, W)`` float32. The U-Net and the encoder
halve ``H`` and ``W`` ``depth`` times, so both must be multiples of ``2 ** depth``
(:func:`surfharm.harmonize.volumetric.slices.slice_geometry` pads slices accordingly).

- :class:`ConvBlock`: two 3x3 convolutions, each followed by a normalisation and LeakyReLU.
- :class:`Encoder2d`: a :class:`ConvBlock` then ``depth`` stages of (strided 3x3 convolution, stride 2
  -> :class:`ConvBlock`); returns every stage's features (the U-Net's skips) or, with a head, a
  vector per image.
- :class:`UNet2d`: :class:`Encoder2d` + a decoder of transposed convolutions (2x2, stride 2) with skip
  concatenations; optionally the input is concatenated with the last feature map before the 1x1
  output convolution (DeepHarmony's "final concatenation").
- :class:`PatchDiscriminator`: a PatchGAN critic (pix2pix): 4x4 convolutions of stride 2, one score
  per overlapping patch.

``norm`` is "batch", "instance" or "none" everywhere. Batch normalisation keeps running statistics
(buffers): call ``eval()`` before inference.
"""
from __future__ import annotations

import torch
from torch import nn

NORMS = ("batch", "instance", "none")


def norm_layer(kind: str, channels: int) -> nn.Module:
    """The normalisation ``kind`` ("batch", "instance" with affine parameters, "none") for ``channels``."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


class ConvBlock(nn.Sequential):
    """Two (3x3 conv -> norm -> LeakyReLU(0.2)) layers: ``(B, in, H, W) -> (B, out, H, W)``."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch"):
        layers = []
        for c_in in (in_channels, out_channels):
            layers += [nn.Conv2d(c_in, out_channels, 3, padding=1, bias=norm == "none"),
                       norm_layer(norm, out_channels), nn.LeakyReLU(0.2)]
        super().__init__(*layers)


class DownBlock(nn.Sequential):
    """Strided 3x3 convolution (stride 2) -> norm -> LeakyReLU -> :class:`ConvBlock`:
    ``(B, in, H, W) -> (B, out, H/2, W/2)``."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch"):
        super().__init__(nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=norm == "none"),
                         norm_layer(norm, out_channels), nn.LeakyReLU(0.2),
                         ConvBlock(out_channels, out_channels, norm))


class UpBlock(nn.Module):
    """Transposed 2x2 convolution (stride 2), concatenation with the skip, :class:`ConvBlock`:
    ``(B, in, H, W), skip (B, skip, 2H, 2W) -> (B, out, 2H, 2W)``."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, norm: str = "batch"):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.conv = ConvBlock(out_channels + skip_channels, out_channels, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


def stage_channels(base_channels: int, depth: int, max_channels: int = 512) -> list[int]:
    """Channels of the ``depth + 1`` stages: ``base * 2 ** i``, capped at ``max_channels``."""
    return [min(base_channels * 2 ** i, max_channels) for i in range(depth + 1)]


class Encoder2d(nn.Module):
    """Contracting path: ``(B, in, H, W)`` -> features of every stage.

    Parameters
    ----------
    in_channels : input channels.
    depth : number of halvings (strided convolutions).
    base_channels : channels of the first stage; stage ``i`` has ``base * 2 ** i`` (capped at 512).
    norm : "batch", "instance" or "none".
    out_features : when set, a head (global average pool -> linear) maps the last stage to a
        ``(B, out_features)`` vector (e.g. a contrast or style code), and :meth:`forward` returns it.

    ``forward(x)`` returns the list ``[(B, c_0, H, W), (B, c_1, H/2, W/2), ..., (B, c_depth, H/2^depth,
    W/2^depth)]`` (the U-Net's skips; the last is the bottleneck), or the vector with ``out_features``.
    """

    def __init__(self, in_channels: int, depth: int = 3, base_channels: int = 16, norm: str = "batch",
                 out_features: int | None = None):
        super().__init__()
        self.channels = stage_channels(base_channels, depth)
        self.stem = ConvBlock(in_channels, self.channels[0], norm)
        self.down = nn.ModuleList(DownBlock(a, b, norm) for a, b in zip(self.channels[:-1], self.channels[1:]))
        self.head = None if out_features is None else nn.Linear(self.channels[-1], int(out_features))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every stage's features (see the class docstring)."""
        feats = [self.stem(x)]
        for block in self.down:
            feats.append(block(feats[-1]))
        return feats

    def forward(self, x: torch.Tensor):
        feats = self.features(x)
        if self.head is None:
            return feats
        return self.head(feats[-1].mean(dim=(2, 3)))


class UNet2d(nn.Module):
    """A 2-D U-Net: ``(B, in, H, W) -> (B, out, H, W)`` (H, W multiples of ``2 ** depth``).

    Parameters
    ----------
    in_channels, out_channels : channels of the input and of the output.
    depth : number of strided-convolution halvings (and transposed-convolution doublings).
    base_channels : channels of the first stage (doubled at each halving, capped at 512).
    norm : "batch", "instance" or "none".
    final_concat : concatenate the input with the last decoder feature map before the 1x1 output
        convolution (DeepHarmony), so the output layer sees the input intensities directly and the
        network learns a correction of them rather than a reconstruction.
    """

    def __init__(self, in_channels: int, out_channels: int, depth: int = 3, base_channels: int = 16,
                 norm: str = "batch", final_concat: bool = False):
        super().__init__()
        self.depth = int(depth)
        self.encoder = Encoder2d(in_channels, depth, base_channels, norm)
        ch = self.encoder.channels
        self.up = nn.ModuleList(UpBlock(ch[i + 1], ch[i], ch[i], norm) for i in reversed(range(depth)))
        self.final_concat = bool(final_concat)
        self.out = nn.Conv2d(ch[0] + (in_channels if final_concat else 0), out_channels, 1)

    def decode(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """The last decoder feature map ``(B, base, H, W)`` from the encoder's features."""
        x = feats[-1]
        for block, skip in zip(self.up, reversed(feats[:-1])):
            x = block(x, skip)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        multiple = 2 ** self.depth
        if x.shape[-1] % multiple or x.shape[-2] % multiple:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not a multiple of 2 ** depth = {multiple}; "
                             "pad the slices (slice_geometry(depth=...))")
        last = self.decode(self.encoder(x))
        return self.out(torch.cat([x, last], dim=1) if self.final_concat else last)


class PatchDiscriminator(nn.Module):
    """PatchGAN critic: ``(B, in, H, W) -> (B, 1, H / 2^n_layers - 2, ...)`` raw scores (no sigmoid).

    4x4 convolutions: ``n_layers`` of stride 2 (channels ``base``, ``2 base``, ... capped at ``8 base``;
    no normalisation on the first), one of stride 1, and a 1-channel output convolution; each score
    judges one overlapping patch (70 x 70 pixels for ``n_layers = 3``, as pix2pix).
    ``n_classes`` > 1 gives one score map per class (e.g. per site, as multi-domain GANs use).
    """

    def __init__(self, in_channels: int, base_channels: int = 64, n_layers: int = 3, norm: str = "instance",
                 n_classes: int = 1):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, base_channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        ch = base_channels
        for i in range(1, n_layers + 1):
            out = base_channels * min(2 ** i, 8)
            stride = 2 if i < n_layers else 1
            layers += [nn.Conv2d(ch, out, 4, stride=stride, padding=1, bias=norm == "none"),
                       norm_layer(norm, out), nn.LeakyReLU(0.2)]
            ch = out
        layers.append(nn.Conv2d(ch, int(n_classes), 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


__all__ = ["ConvBlock", "DownBlock", "Encoder2d", "NORMS", "PatchDiscriminator", "UNet2d", "UpBlock", "norm_layer",
           "stage_channels"]
