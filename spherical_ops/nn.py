"""Spherical CNN layers on icosahedral meshes (torch.nn modules).

Every layer takes ``(B, C, V)`` tensors whose vertex axis follows FreeSurfer's icN order
(:func:`spherical_ops.icosphere`). Convolutions, pooling and upsampling return them as views of
vertex-major ``(B, V, C)`` memory, the layout their gathers read, so no layer copies its input into
another layout; ``IcoUNet`` returns channels-first memory. Index tables and sparse maps are
non-persistent buffers: ``module.to(device)`` moves them, and ``state_dict()`` holds only learned
weights.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import nn

from spherical_ops import topology
from spherical_ops._cache import transient
from spherical_ops.functional import (averaging_matrix_t, bag_mean, group_norm_leaky_relu, neighborhood_conv,
                                      transpose_table)
from spherical_ops.mesh import check_level, n_vertices

__all__ = ["IcoConv", "IcoPool", "IcoUpConv", "IcoUpsample", "IcoUNet", "GroupNormLeakyReLU", "check_input"]


def check_input(x: torch.Tensor, channels: int, level: int, layer: str) -> None:
    """Raise a clear error unless ``x`` is a floating (B, channels, V(level)) tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{layer} expects a torch.Tensor of shape (B, {channels}, {n_vertices(level)}), "
                        f"got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"{layer} expects a 3-D tensor (B, C, V) = (B, {channels}, {n_vertices(level)}), "
                         f"got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{layer} expects a floating-point tensor, got dtype {x.dtype}")
    if x.shape[1] != channels:
        raise ValueError(f"{layer} expects {channels} input channels, got {x.shape[1]} (shape {tuple(x.shape)})")
    expected = n_vertices(level)
    if x.shape[2] != expected:
        try:
            found = f"level {topology_level(x.shape[2])}"
        except ValueError:
            found = "no icosahedral level"
        raise ValueError(f"{layer} works at level {level} and expects {expected} vertices, got {x.shape[2]} "
                         f"({found}); valid counts are 10 * 4**level + 2: 12, 42, 162, 642, 2562, 10242, "
                         "40962, 163842")


def _check_concatenation(xs: tuple, channels: int, level: int) -> None:
    """Raise a clear error unless ``xs`` are (B, C_i, V(level)) tensors with ``sum(C_i) == channels``."""
    for i, x in enumerate(xs):
        check_input(x, x.shape[1] if isinstance(x, torch.Tensor) and x.dim() == 3 else 0, level,
                    f"IcoConv (input {i + 1} of {len(xs)})")
    shapes = [tuple(x.shape) for x in xs]
    if sum(shape[1] for shape in shapes) != channels or len({shape[0] for shape in shapes}) != 1:
        raise ValueError(f"IcoConv expects inputs that concatenate to (B, {channels}, {n_vertices(level)}) "
                         f"along the channels, got shapes {shapes}")


def topology_level(n: int) -> int:
    from spherical_ops.mesh import level_of
    return level_of(n)


# Index tables and averaging lists are shared by every layer at the same level (one copy in memory,
# not one per layer) and stored with int32 indices: at level 7 this is ~20 MB instead of ~75 MB per U-Net.
# Modules register these shared tensors as buffers; ``.to()`` gives each module its own moved copy.
# The meshes and numpy tables they are made from are needed only meanwhile: computed inside
# ``transient()``, they are not kept in the caches of ``mesh`` and ``topology`` (~45 MB at level 7).

@functools.cache
def _shared_index(kind: str, level: int) -> torch.Tensor:
    tables = {"ring1": topology.neighbors_1ring, "ring2": topology.neighbors_2ring,
              "pool": topology.pooling_index}
    with transient():
        return torch.from_numpy(np.ascontiguousarray(tables[kind](level), dtype=np.int32))


@functools.cache
def _shared_transpose(kind: str, level: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(reverse, extras) of :func:`~spherical_ops.functional.transpose_table` for a ring table."""
    reverse, extras = transpose_table(_shared_index(kind, level).numpy(), n_vertices(level))
    return torch.from_numpy(reverse), torch.from_numpy(extras)


@functools.cache
def _shared_bags(kind: str, level: int) -> torch.Tensor:
    """A fixed averaging map (pooling, upsampling, the transposed convolution's) as bags: (V_out, K)
    int32, the inputs each output averages."""
    with transient():
        return torch.from_numpy(np.ascontiguousarray(_bag_table(kind, level), dtype=np.int32))


@functools.cache
def _shared_matrix_t(kind: str, level: int) -> torch.Tensor:
    """The transposed averaging matrix (CSR) of :func:`_shared_bags`, for the backward pass."""
    return averaging_matrix_t(_shared_bags(kind, level).numpy(), _bag_inputs(kind, level))


def _bag_table(kind: str, level: int) -> np.ndarray:
    """Bags (V_out, K) for mean pooling from ``level``, upsampling or the transposed convolution's
    averaging from ``level`` to ``level + 1``; they index :func:`_bag_inputs` inputs."""
    if kind == "pool_mean":
        return topology.pooling_index(level)
    if kind == "upsample":                          # coarse vertices keep their value, new ones average
        coarse = np.arange(n_vertices(level))
        return np.concatenate([np.stack([coarse, coarse], 1), topology.upsampling_parents(level + 1)])
    if kind == "upconv":                            # (V_fine, 2) slots into the 7 * V_coarse slot outputs
        return topology.upconv_slots(level + 1)
    raise ValueError(f"unknown averaging map {kind!r}")


def _bag_inputs(kind: str, level: int) -> int:
    """The number of inputs the bags of :func:`_bag_table` index: vertices, or slot outputs for "upconv"."""
    return 7 * n_vertices(level) if kind == "upconv" else n_vertices(level)


class IcoConv(nn.Module):
    r"""Convolution over the 1-ring (7 vertices) or 2-ring (19 vertices) of every vertex.

    .. math::
        y_{b,o,v} = \mathrm{bias}_o + \sum_{c=1}^{C_{in}} \sum_{k=1}^{K} W_{o,c,k}\, x_{b,c,N(v)_k}

    where :math:`N(v)` lists the ring of ``v`` in angular order with the centre last
    (:func:`spherical_ops.topology.neighbors_1ring` / ``neighbors_2ring``); ``K = 7`` or ``19``.
    Pentagon vertices repeat the centre in their missing slots.

    Parameters
    ----------
    in_channels, out_channels : int
        feature channels.
    level : int
        icosahedral level of the mesh (0..7).
    ring : int
        1 (7-vertex filter) or 2 (19-vertex filter).
    bias : bool
        learn an additive bias per output channel.

    Notes
    -----
    Shapes:
        input (B, in_channels, V), output (B, out_channels, V), ``V = 10 * 4**level + 2``; the output
        is a view of vertex-major (B, V, out_channels) memory.
    """

    def __init__(self, in_channels: int, out_channels: int, level: int, ring: int = 1, bias: bool = True):
        super().__init__()
        if ring not in (1, 2):
            raise ValueError(f"ring must be 1 (7-vertex filter) or 2 (19-vertex filter), got {ring!r}")
        _check_channels(in_channels, "in_channels")
        _check_channels(out_channels, "out_channels")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.level, self.ring = check_level(level), int(ring)
        index = _shared_index("ring1" if ring == 1 else "ring2", self.level)
        self.kernel_size = index.shape[1]
        self.register_buffer("index", index, persistent=False)
        # The table read backwards, which only the backward pass uses, is made by the first forward
        # pass that needs gradients (:meth:`transpose_tables`): inference never holds it.
        self.register_buffer("reverse_index", None, persistent=False)
        self.register_buffer("reverse_extras", None, persistent=False)
        self._extras_per_slot: tuple[int, ...] | None = None
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-uniform weights and uniform bias, as ``nn.Conv1d`` with kernel size K."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_channels * self.kernel_size)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, *more: torch.Tensor) -> torch.Tensor:
        """Convolve ``x``; with further inputs, convolve the channel concatenation of all of them
        (``conv(a, b)`` equals ``conv(torch.cat([a, b], 1))``) without forming it."""
        if more:
            _check_concatenation((x, *more), self.in_channels, self.level)
        else:
            check_input(x, self.in_channels, self.level, "IcoConv")
        weight = self.weight.to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        transpose = self.transpose_tables() if _grad_needed(x, *more, weight, bias) else None
        return neighborhood_conv((x, *more), weight, bias, self.index, transpose=transpose)

    def transpose_tables(self) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
        """``(reverse, extras, extras per slot)`` for the backward pass (see
        :func:`~spherical_ops.functional.neighborhood_conv`), made on the first call and kept as
        non-persistent buffers on the device of ``index``."""
        if self.reverse_index is None:
            reverse, extras = _shared_transpose("ring1" if self.ring == 1 else "ring2", self.level)
            self.reverse_index = reverse.to(self.index.device)
            self.reverse_extras = extras.to(self.index.device)
            # Counted once here: counting them in every backward pass would make a GPU wait for the
            # count (a device-to-host copy per layer).
            self._extras_per_slot = tuple(np.bincount(extras[:, 1].numpy(), minlength=self.kernel_size).tolist())
        return self.reverse_index, self.reverse_extras, self._extras_per_slot

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, level={self.level}, ring={self.ring}, "
                f"bias={self.bias is not None}")


class IcoPool(nn.Module):
    """Pooling from level ``level`` to ``level - 1`` over each coarse vertex's 7-vertex fine ring.

    ``mode="mean"`` averages the 7 values (a pentagon's repeated centre counts twice),
    ``mode="max"`` keeps the largest.

    Shapes:
        input (B, C, V(level)), output (B, C, V(level - 1)) with ``V(level - 1) = (V(level) + 6) / 4``.
    """

    def __init__(self, level: int, mode: str = "mean"):
        super().__init__()
        self.level = check_level(level)
        if self.level == 0:
            raise ValueError("IcoPool needs level >= 1: level 0 has no coarser level")
        if mode not in ("mean", "max"):
            raise ValueError(f"mode must be 'mean' or 'max', got {mode!r}")
        self.mode = mode
        if mode == "mean":
            _register_bags(self, "pool_mean", self.level)
        else:
            self.register_buffer("index", _shared_index("pool", self.level), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, x.shape[1] if x.dim() == 3 else 0, self.level, "IcoPool")
        if self.mode == "mean":
            return _average(self, x)
        return x[:, :, self.index.long()].amax(dim=-1)

    def extra_repr(self) -> str:
        return f"level={self.level} -> {self.level - 1}, mode={self.mode!r}"


class IcoUpsample(nn.Module):
    """Parameter-free upsampling from level ``level`` to ``level + 1``.

    Existing vertices keep their value; each new vertex takes the mean of its two parents.

    Shapes:
        input (B, C, V(level)), output (B, C, V(level + 1)) with ``V(level + 1) = 4 * V(level) - 6``.
    """

    def __init__(self, level: int):
        super().__init__()
        self.level = check_level(level, max_level=6)
        _register_bags(self, "upsample", self.level)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, x.shape[1] if x.dim() == 3 else 0, self.level, "IcoUpsample")
        return _average(self, x)

    def extra_repr(self) -> str:
        return f"level={self.level} -> {self.level + 1}"


class IcoUpConv(nn.Module):
    r"""Transposed convolution of the Spherical U-Net, from level ``level`` to ``level + 1``.

    Every coarse vertex ``i`` emits seven vectors :math:`z_{i,k} = W_k x_i` (``W_k``: out x in), one per
    slot ``k`` of its ring in the fine mesh (slot 6 is ``i`` itself). A coarse vertex keeps its centre
    output; each new vertex averages the two outputs it receives from its two parents; then the bias
    is added:

    .. math::
        y_u = b + \begin{cases} z_{u,6} & u < V(\text{level}) \\
              \tfrac12 (z_{p_1,k_1} + z_{p_2,k_2}) & \text{otherwise} \end{cases}

    Shapes:
        input (B, in_channels, V(level)), output (B, out_channels, V(level + 1)).
    """

    def __init__(self, in_channels: int, out_channels: int, level: int, bias: bool = True):
        super().__init__()
        _check_channels(in_channels, "in_channels")
        _check_channels(out_channels, "out_channels")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.level = check_level(level, max_level=6)
        _register_bags(self, "upconv", self.level)
        # weight[k * out + o, c]: slot-major rows so that (B, V, 7*out) views as (B, 7*V, out).
        self.weight = nn.Parameter(torch.empty(7 * out_channels, in_channels))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """As ``nn.Linear(in_channels, 7 * out_channels)``."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_channels)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, self.level, "IcoUpConv")
        weight = self.weight.to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return _average(self, _slot_outputs(x, weight, bias))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, level={self.level} -> {self.level + 1}"


class GroupNormLeakyReLU(nn.GroupNorm):
    """``GroupNorm`` followed by ``LeakyReLU(negative_slope)``, fused so that only the output is stored
    for the backward pass (half the activation memory of the two separate modules).

    Same parameters and ``state_dict`` as :class:`torch.nn.GroupNorm`.

    Shapes:
        input (B, C, V), output (B, C, V).
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, negative_slope: float = 0.2):
        super().__init__(num_groups, num_channels, eps=eps, affine=True)
        self.negative_slope = negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return group_norm_leaky_relu(x, self.num_groups, self.weight, self.bias, self.eps, self.negative_slope)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", negative_slope={self.negative_slope}"


def _norm_and_activation(kind: str, channels: int) -> list[nn.Module]:
    if kind in ("group", "instance"):
        # Four groups as in the Spherical U-Net (fewer when the channel count does not divide);
        # "instance" is one group per channel.
        groups = math.gcd(4, channels) if kind == "group" else channels
        return [GroupNormLeakyReLU(groups, channels)]
    if kind == "batch":
        return [nn.BatchNorm1d(channels), nn.LeakyReLU(0.2, inplace=True)]
    if kind == "none":
        return [nn.LeakyReLU(0.2, inplace=True)]
    raise ValueError(f"norm must be 'group', 'instance', 'batch' or 'none', got {kind!r}")


def _slot_outputs(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The transposed convolution's slot outputs ``z[b, o, 7 i + k] = (W_k x_i)_o + bias_o``.

    x (B, C, V); weight (7 * O, C), rows ``k * O + o``; bias (O,) or None. Returns (B, O, 7 V).
    """
    batch, _, n_coarse = x.shape
    weight_t = weight.t().expand(batch, -1, -1)                               # (B, C, 7*O)
    if bias is None:
        z = torch.bmm(x.transpose(1, 2), weight_t)                            # (B, V, 7*O)
    else:
        # Every fine output is one slot output or the mean of two, so a bias added to every slot
        # output, inside the product, is added to the result: no extra pass over the fine mesh.
        z = torch.baddbmm(bias.repeat(7), x.transpose(1, 2), weight_t)
    return z.reshape(batch, 7 * n_coarse, -1).transpose(1, 2)


class _ConvBlock(nn.Sequential):
    """2 x (IcoConv, norm, LeakyReLU(0.2))."""

    def __init__(self, in_channels: int, out_channels: int, level: int, norm: str, ring: int):
        super().__init__(
            IcoConv(in_channels, out_channels, level, ring=ring), *_norm_and_activation(norm, out_channels),
            IcoConv(out_channels, out_channels, level, ring=ring), *_norm_and_activation(norm, out_channels),
        )


class IcoUNet(nn.Module):
    """Spherical U-Net: an encoder-decoder over ``depth`` icosahedral levels with skip connections.

    Encoder: at ``level``, a block of 2 x (IcoConv, norm, LeakyReLU 0.2) from ``in_channels`` to
    ``base_channels``; then ``depth - 1`` times: mean pooling to the next coarser level and a block
    doubling the channels. Decoder: ``depth - 1`` times: IcoUpConv to the next finer level (halving
    the channels), concatenation with the encoder's features there, and a block. A per-vertex linear
    layer maps ``base_channels`` to ``out_channels``.

    With ``depth=5, base_channels=16`` the widths are 16-32-64-128-256 (1.7 M parameters for one
    input and one output channel), the configuration of the Spherical U-Net peers.

    Parameters
    ----------
    in_channels, out_channels : int
        input features (e.g. thickness, sulc, curv) and outputs.
    level : int
        icosahedral level of the data (``level - depth + 1`` must be >= 0).
    depth : int
        number of resolution levels.
    base_channels : int
        channels at the finest level.
    norm : str
        "group" (GroupNorm, 4 groups), "instance", "batch" or "none".
    ring : int
        1 or 2, the convolution neighbourhood.

    Notes
    -----
    Shapes:
        input (B, in_channels, V(level)), output (B, out_channels, V(level)).
    """

    def __init__(self, in_channels: int, out_channels: int, level: int, depth: int = 5,
                 base_channels: int = 16, norm: str = "group", ring: int = 1):
        super().__init__()
        with transient():   # one mesh per level for all the layers' tables, dropped once they exist
            self._build_layers(in_channels, out_channels, level, depth, base_channels, norm, ring)

    def _build_layers(self, in_channels, out_channels, level, depth, base_channels, norm, ring) -> None:
        self.level = check_level(level)
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be a positive int, got {depth!r}")
        if self.level - depth + 1 < 0:
            raise ValueError(f"depth {depth} needs level >= {depth - 1} (one level per resolution); got level {level}")
        _check_channels(base_channels, "base_channels")
        self.in_channels, self.out_channels, self.depth = int(in_channels), int(out_channels), depth
        widths = [base_channels * 2 ** i for i in range(depth)]
        levels = [self.level - i for i in range(depth)]
        self.down = nn.ModuleList()
        for i in range(depth):
            block = _ConvBlock(in_channels if i == 0 else widths[i - 1], widths[i], levels[i], norm, ring)
            self.down.append(block if i == 0 else nn.Sequential(IcoPool(levels[i - 1]), block))
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for i in reversed(range(depth - 1)):
            self.up.append(IcoUpConv(widths[i + 1], widths[i], levels[i + 1]))
            self.merge.append(_ConvBlock(2 * widths[i], widths[i], levels[i], norm, ring))
        self.head = PointwiseLinear(widths[0], out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, self.level, "IcoUNet")
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
        skips.pop()
        for up, merge in zip(self.up, self.merge):
            # The block's first convolution reads the upsampled features and the skip connection as
            # two inputs, so their concatenation is never formed; calling the layers one by one frees
            # both once it has run (a call of the whole block would hold its inputs until it returns).
            first, *rest = merge
            x = up(x)                                   # rebound here: the coarser features are freed
            x = first(x, skips.pop())
            for layer in rest:
                x = layer(x)
        return self.head(x)

    def extra_repr(self) -> str:
        return f"level={self.level}, depth={self.depth}"


class PointwiseLinear(nn.Conv1d):
    """A per-vertex linear map (``nn.Conv1d`` with kernel size 1, same parameters and ``state_dict``),
    computed as one matrix product: the convolution path would copy its input into another layout.

    Shapes:
        input (B, in_channels, V), output (B, out_channels, V).
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.matmul(self.weight[:, :, 0].to(x.dtype), x)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype).view(1, -1, 1)
        return y


def _check_channels(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _register_bags(module: nn.Module, kind: str, level: int) -> None:
    """Register the shared averaging map ``kind`` at ``level`` as the non-persistent buffer ``bags``;
    its transposed matrix ``matrix_t``, used only by the backward pass, is made by :func:`_average`."""
    module.register_buffer("bags", _shared_bags(kind, level), persistent=False)
    module.register_buffer("matrix_t", None, persistent=False)
    module._bag_kind = kind


def _average(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``bag_mean`` over ``module.bags``, making ``module.matrix_t`` when a gradient is first needed."""
    if module.matrix_t is None and _grad_needed(x):
        module.matrix_t = _shared_matrix_t(module._bag_kind, module.level).to(module.bags.device)
    return bag_mean(x, module.bags, module.matrix_t)


def _grad_needed(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd will record an operation on ``tensors`` (so its backward tables are needed)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
