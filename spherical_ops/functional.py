"""Autograd kernels behind the layers: tiled neighbourhood convolution and fixed sparse maps.

Why custom kernels: a plain 1-ring convolution gathers a (V, 7 * C) tensor, which at level 7 is
~150 MB per layer; allocating it touches fresh pages every call and keeping it for the backward pass
dominates memory. Here the gather is done tile by tile into a small reused buffer that stays in cache,
each tile is multiplied at once, and the gathered tensor is never stored: the backward pass reads
the neighbourhood table backwards (:func:`transpose_table`) and gathers the output gradient once per
input tile for both gradients, so rows are gathered and never scattered. Pooling, parameter-free
upsampling and the averaging step of the transposed convolution average fixed lists of vertices
("bags"): the forward pass is one fused gather-and-mean (``embedding_bag``, no temporary), the
backward pass the transposed averaging matrix in sparse CSR form.

All functions take ``(B, C, V)`` tensors like the layers, in any memory layout. Their outputs are
``(B, C, V)`` views of vertex-major ``(B, V, C)`` memory: the gathers read rows of that layout, so
activations flow from layer to layer without a transposed copy. The convolution's input gradients
come in their input's layout.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch.autograd.function import once_differentiable

#: Vertices per tile on CPU, at most: small tiles keep the gathered block in cache.
CPU_TILE = 4096
#: Bytes of one gathered tile on CPU, at most (wide layers get fewer vertices per tile), so that the
#: buffer stays small next to the activations instead of reaching 18 MB for 256 channels.
CPU_TILE_BYTES = 4 << 20
CPU_MIN_TILE = 256


def _tile_size(device: torch.device, n: int, row_bytes: int) -> int:
    """Vertices per tile for gathered rows of ``row_bytes`` bytes (K slots x C channels x element size)."""
    # GPUs prefer one large launch; the caching allocator makes the big temporary cheap there.
    if device.type != "cpu":
        return n
    return min(n, CPU_TILE, max(CPU_MIN_TILE, CPU_TILE_BYTES // max(row_bytes, 1)))


class _NeighborhoodConv(torch.autograd.Function):
    """y[b, o, v] = bias[o] + sum_{c, k} weight[o, c, k] * x[b, c, index[v, k]], y vertex-major,
    where x is the channel concatenation of the inputs ``xs`` (never formed)."""

    @staticmethod
    def forward(ctx, flat_index, ring_size, reverse, extras, extras_per_slot, weight, bias, *xs):
        n_out = flat_index.numel() // ring_size
        sources = [x.transpose(1, 2).contiguous() for x in xs]     # (B, V_in, C_i), no copy if vertex-major
        y_rows = xs[0].new_empty(xs[0].shape[0], n_out, weight.shape[0])
        w_rows = [_slot_major(w) for w in _split_channels(weight, xs)]
        _conv_tiles(sources, w_rows, flat_index, ring_size, y_rows, bias)
        ctx.save_for_backward(flat_index, reverse, extras, weight, *xs)
        ctx.has_bias = bias is not None
        ctx.ring_size = ring_size
        ctx.extras_per_slot = extras_per_slot
        return y_rows.transpose(1, 2)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        flat_index, reverse, extras, weight, *xs = ctx.saved_tensors
        k = ctx.ring_size
        c_out, c_in = weight.shape[:2]
        need_w, need_b = ctx.needs_input_grad[5:7]
        need_xs = ctx.needs_input_grad[7:]
        if grad_y.stride(1) != 1 and grad_y.stride(2) != 1:       # e.g. expanded: BLAS needs a unit stride
            grad_y = grad_y.contiguous()
        weights = _split_channels(weight, xs)
        # With the transpose table both gradients come from one gather of grad_y per input tile; when
        # only the weight gradient is needed and the input is narrower (a first layer), gathering the
        # input is cheaper.
        if reverse is not None and (any(need_xs) or (need_w and c_out <= c_in)):
            grad_xs, grad_ws = _backward_by_input_tiles(xs, grad_y, weights, k, reverse, extras, need_xs, need_w,
                                                        ctx.extras_per_slot)
        else:
            grad_xs = [_input_grad_by_scatter(grad_y, w, flat_index, k, x.shape[2]) if need else None
                       for x, w, need in zip(xs, weights, need_xs)]
            grad_ws = [_weight_grad_by_output_tiles(x, grad_y, flat_index, k, c_out) for x in xs] if need_w else None
        grad_w = None if grad_ws is None else grad_ws[0] if len(grad_ws) == 1 else torch.cat(grad_ws, dim=1)
        grad_b = grad_y.sum((0, 2)) if need_b and ctx.has_bias else None
        return (None, None, None, None, None, grad_w, grad_b, *grad_xs)


def _split_channels(weight: torch.Tensor, xs) -> tuple[torch.Tensor, ...]:
    """The (O, C_i, K) blocks of ``weight`` that act on each input of the concatenation ``xs``."""
    return torch.split(weight, [x.shape[1] for x in xs], dim=1)


def _conv_tiles(sources, w_rows, flat_index, k, out_rows, bias=None):
    """out_rows[b, v] = bias + sum_i concat_k(sources_i[b, index[v, k]]) @ w_rows_i^T, tile by tile.

    sources: (B, V_src, C_i) rows, gathered fast; w_rows: (O, K*C_i) slot-major, one per source;
    out_rows (B, V_out, O), each tile a contiguous block of rows, the layout the next gather reads;
    bias (O,) or None. Several sources give a convolution of their channel concatenation without
    forming it (a U-Net's skip connection).
    """
    batch, n_out = out_rows.shape[:2]
    widest = max(src.shape[2] for src in sources)
    tile = _tile_size(out_rows.device, n_out, k * widest * out_rows.element_size())
    buf = out_rows.new_empty(tile * k * widest)
    for b in range(batch):
        for start in range(0, n_out, tile):
            stop = min(n_out, start + tile)
            out = out_rows[b, start:stop]
            for i, (src, w) in enumerate(zip(sources, w_rows)):
                gathered = _gather_tile(src[b], flat_index, start, stop, k, buf)
                if i > 0:
                    out.addmm_(gathered, w.t())
                elif bias is None:
                    torch.mm(gathered, w.t(), out=out)
                else:
                    torch.addmm(bias, gathered, w.t(), out=out)


def _backward_by_input_tiles(xs, grad_y, weights, k, reverse, extras, need_xs, need_w, extras_per_slot=None):
    """Input and weight gradients from the table read backwards (:func:`transpose_table`).

    For an input tile of vertices u, ``H[u, (k, o)] = grad_y[o, v]`` for the vertex v that uses u in
    slot k (zero if none) is gathered once; then, for each input x_i, ``grad_x_i[:, tile] = W'_i @ H^T``
    (written in x_i's layout) and ``grad_w_i += x_i[:, tile] @ H``, where x_i's slice is read in place.
    Rows are only gathered, never scattered (``index_add_`` costs 2-3x more per row), and the inputs
    are neither transposed nor gathered again. The few slots used by several vertices (``extras``)
    are added slot by slot.

    Returns
    -------
    tuple of list
        a list of (B, C_i, V_in) input gradients (None where not needed) and, if ``need_w``, a list of
        (O, C_i, K) weight gradients.
    """
    batch, _, n_in = xs[0].shape
    c_out, n_out = weights[0].shape[0], grad_y.shape[2]
    # Rows of grad_y plus one zero row, the target of slots no vertex uses.
    g_rows = grad_y.new_empty(batch, n_out + 1, c_out)
    g_rows[:, :n_out].copy_(grad_y.transpose(1, 2))
    g_rows[:, n_out].zero_()
    wt_rows = [_slot_major(w.transpose(0, 1)) if need else None for w, need in zip(weights, need_xs)]   # (C_i, K*O)
    # Each input's gradient in that input's layout (autograd would otherwise copy a leaf's gradient
    # into it): rows for vertex-major inputs, channels-first otherwise.
    as_rows = [x.stride(1) == 1 for x in xs]
    grad_xs = [_empty_in_layout(grad_y, batch, x.shape[1], n_in, rows) if need else None
               for x, need, rows in zip(xs, need_xs, as_rows)]
    grad_w_cols = [grad_y.new_zeros(x.shape[1], k * c_out) for x in xs] if need_w else None            # (C_i, K*O)
    tile = _tile_size(grad_y.device, n_in, k * c_out * grad_y.element_size())
    buf = grad_y.new_empty(tile * k * c_out)
    for b in range(batch):
        for start in range(0, n_in, tile):
            stop = min(n_in, start + tile)
            h = _gather_tile(g_rows[b], reverse, start, stop, k, buf)            # (T, K*O)
            for i, x in enumerate(xs):
                if need_xs[i] and as_rows[i]:
                    torch.mm(h, wt_rows[i].t(), out=grad_xs[i][b, :, start:stop].t())
                elif need_xs[i]:
                    torch.mm(wt_rows[i], h.t(), out=grad_xs[i][b, :, start:stop])
                if need_w:
                    grad_w_cols[i].addmm_(x[b, :, start:stop], h)
    grad_ws = None
    if need_w:
        grad_ws = [g.view(x.shape[1], k, c_out).permute(2, 0, 1).contiguous() for g, x in zip(grad_w_cols, xs)]
    # The few slots used by more than one vertex, slot by slot (extras are sorted by slot).
    counts = extras_per_slot
    if counts is None:
        counts = torch.bincount(extras[:, 1], minlength=k).tolist() if extras.numel() else []
    start = 0
    for slot, count in enumerate(counts):
        if count:
            u, v = extras[start:start + count, 0], extras[start:start + count, 2]
            for b in range(batch):
                g_extra = g_rows[b, v]                                          # (n, O)
                for i, x in enumerate(xs):
                    if need_xs[i]:
                        grad_xs[i][b].index_add_(1, u, torch.mm(weights[i][:, :, slot].t(), g_extra.t()))
                    if need_w:
                        grad_ws[i][:, :, slot].addmm_(g_extra.t(), x[b][:, u].t())
            start += count
    return grad_xs, grad_ws


def _empty_in_layout(like: torch.Tensor, batch: int, channels: int, n: int, rows: bool) -> torch.Tensor:
    """An uninitialised (B, C, V) tensor: a view of vertex-major memory if ``rows``, else channels-first."""
    if rows:
        return like.new_empty(batch, n, channels).transpose(1, 2)
    return like.new_empty(batch, channels, n)


def _weight_grad_by_output_tiles(x, grad_y, flat_index, k, c_out):
    """grad_w[o, c, k] = sum_{b, v} grad_y[b, o, v] x[b, c, index[v, k]], re-gathering x per tile."""
    batch, c_in, _ = x.shape
    n_out = grad_y.shape[2]
    x_rows = x.transpose(1, 2).contiguous()
    tile = _tile_size(x.device, n_out, k * c_in * x.element_size())
    buf = x.new_empty(tile * k * c_in)
    grad_w_rows = x.new_zeros(c_out, k * c_in)
    for b in range(batch):
        for start in range(0, n_out, tile):
            stop = min(n_out, start + tile)
            gathered = _gather_tile(x_rows[b], flat_index, start, stop, k, buf)
            grad_w_rows.addmm_(grad_y[b, :, start:stop], gathered)               # (O, T) read in place
    return grad_w_rows.view(c_out, k, c_in).permute(0, 2, 1).contiguous()


def _input_grad_by_scatter(grad_y, weight, flat_index, k, n_in):
    """grad_x[b, c, u] = sum over (v, k) with index[v, k] == u of weight[o, c, k] grad_y[b, o, v],
    scattered with ``index_add_`` (used when no transpose table is given)."""
    batch, c_out, n_out = grad_y.shape
    c_in = weight.shape[1]
    w_rows = _slot_major(weight)
    tile = _tile_size(grad_y.device, n_out, k * c_in * grad_y.element_size())
    grad_buf = grad_y.new_empty(tile, k * c_in)
    grad_x_rows = grad_y.new_zeros(batch, n_in, c_in)
    for b in range(batch):
        for start in range(0, n_out, tile):
            stop = min(n_out, start + tile)
            g_gathered = torch.mm(grad_y[b, :, start:stop].t(), w_rows, out=grad_buf[: stop - start])
            # index_add_ is about 3x slower with int32 indices than with int64 (torch 2.x CPU)
            rows = flat_index[start * k: stop * k].long()
            grad_x_rows[b].index_add_(0, rows, g_gathered.view(-1, c_in))
    # A transposed view: consumers accept any strides, and a copy would cost a full pass.
    return grad_x_rows.transpose(1, 2)


def transpose_table(index: np.ndarray, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """The neighbourhood table read backwards, for the gradient of a neighbourhood convolution.

    Parameters
    ----------
    index : ndarray
        (V_out, K) table; ``index[v, k]`` is the input vertex in slot ``k`` of ``v``.
    n_in : int
        number of input vertices.

    Returns
    -------
    tuple[ndarray, ndarray]
        ``reverse`` (n_in, K) int32: for input vertex ``u`` and slot ``k``, the first output vertex
        ``v`` with ``index[v, k] == u``, or ``V_out`` (a zero row) where there is none; and
        ``extras`` (m, 3) int64 rows ``(u, k, v)`` for the further vertices that use ``u`` in slot
        ``k`` (at level 7: 3260 of 1.15 M slots for the 1-ring).
    """
    n_out, k = index.shape
    reverse = np.full((n_in, k), n_out, dtype=np.int64)
    extras = []
    for slot in range(k):
        u = index[:, slot].astype(np.int64)
        order = np.argsort(u, kind="stable")                         # by u, then by v
        u_sorted = u[order]
        first = np.ones(n_out, dtype=bool)
        first[1:] = u_sorted[1:] != u_sorted[:-1]
        reverse[u_sorted[first], slot] = order[first]
        rest = ~first
        extras.append(np.stack([u_sorted[rest], np.full(rest.sum(), slot), order[rest]], axis=1))
    return reverse.astype(np.int32), np.concatenate(extras).astype(np.int64)


def _slot_major(weight: torch.Tensor) -> torch.Tensor:
    """(O, C, K) weight -> (O, K*C) rows matching a gathered tile laid out as (vertex, slot, channel)."""
    c_out, c_in, k = weight.shape
    return weight.permute(0, 2, 1).reshape(c_out, k * c_in)


def _gather_tile(x_rows, flat_index, start, stop, k, buf):
    """Rows ``index[start:stop]`` of ``x_rows`` (V, C) into the flat buffer ``buf``, viewed as (T, K*C)."""
    n, c = (stop - start) * k, x_rows.shape[1]
    out = buf[: n * c].view(n, c)
    torch.index_select(x_rows, 0, flat_index[start * k: stop * k], out=out)
    return out.view(stop - start, k * c)


def neighborhood_conv(x: torch.Tensor | Sequence[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor | None,
                      index: torch.Tensor, transpose: tuple[torch.Tensor, torch.Tensor] | None = None
                      ) -> torch.Tensor:
    """Spherical convolution over fixed neighbourhoods.

    Parameters
    ----------
    x : Tensor or Sequence[Tensor]
        (B, C_in, V_in) input features, or a sequence of (B, C_i, V_in) tensors with
        ``sum(C_i) == C_in``: the convolution of their channel concatenation, which is never
        formed (each input is gathered on its own, tile by tile).
    weight : Tensor
        (C_out, C_in, K) filter, one weight per neighbourhood slot.
    bias : Tensor or None
        (C_out,) or None.
    index : Tensor
        (V_out, K) int32 or int64 neighbourhood table (e.g. ``topology.neighbors_1ring``).
    transpose : tuple[Tensor, Tensor] or None
        optional ``(reverse, extras)`` from :func:`transpose_table` as tensors; with it
        the input gradient is computed by gathering instead of scattering (faster on CPU). A
        third item, the number of extras per slot (a tuple of K ints), spares the backward pass
        counting them (on a GPU, a wait for the device per call).

    Returns
    -------
    Tensor
        (B, C_out, V_out): ``y[b, o, v] = bias[o] + sum_{c, k} weight[o, c, k] * x[b, c, index[v, k]]``,
        a view of vertex-major (B, V_out, C_out) memory (``.contiguous()`` gives channels-first memory
        where a caller needs it).
    """
    xs = (x,) if isinstance(x, torch.Tensor) else tuple(x)
    widths = [t.shape[1] for t in xs]
    if sum(widths) != weight.shape[1] or len({(t.shape[0], t.shape[2]) for t in xs}) != 1:
        raise ValueError(f"inputs of shapes {[tuple(t.shape) for t in xs]} do not concatenate to the "
                         f"{weight.shape[1]} input channels of a weight of shape {tuple(weight.shape)}")
    k = weight.shape[2]
    reverse = extras = per_slot = None
    if transpose is not None:
        reverse, extras = transpose[0].reshape(-1), transpose[1]
        per_slot = tuple(transpose[2]) if len(transpose) > 2 else None
    return _NeighborhoodConv.apply(index.reshape(-1), k, reverse, extras, per_slot, weight, bias, *xs)


class _BagMean(torch.autograd.Function):
    """y[:, :, v] = mean_k x[:, :, bags[v, k]] (a fixed linear map M); backward uses M^T."""

    @staticmethod
    def forward(ctx, x, bags, matrix_t):
        # One fused gather-and-mean into the output rows. The sparse-matrix product fills a zero matrix
        # first and is slower: 14 ms against 4 ms for the transposed convolution's averaging at level 7.
        if matrix_t is None and ctx.needs_input_grad[0]:
            raise ValueError("bag_mean needs matrix_t (averaging_matrix_t(bags, V_in)) when x requires grad")
        rows = torch.nn.functional.embedding_bag(bags, _vertex_rows(x), mode="mean")    # (V_out, B*C)
        ctx.save_for_backward(matrix_t)
        return _from_vertex_rows(rows, x.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        (matrix_t,) = ctx.saved_tensors
        matrix_t = matrix_t.to(grad_y.dtype)    # the gradient keeps the input's precision
        grad = torch.sparse.mm(matrix_t, _vertex_rows(grad_y))
        return _from_vertex_rows(grad, grad_y.shape[0]), None, None


def _vertex_rows(x: torch.Tensor) -> torch.Tensor:
    """(B, C, V) -> contiguous (V, B*C); free when x is a (B, C, V) view of vertex-major rows (B = 1)."""
    batch, channels, n = x.shape
    return x.permute(2, 0, 1).reshape(n, batch * channels).contiguous()


def _from_vertex_rows(rows: torch.Tensor, batch: int) -> torch.Tensor:
    """(V, B*C) -> a (B, C, V) view, not copied: the convolutions gather from vertex-major rows, so a
    copy to channels-first here would only be transposed back by the next layer."""
    return rows.view(rows.shape[0], batch, -1).permute(1, 2, 0)


def bag_mean(x: torch.Tensor, bags: torch.Tensor, matrix_t: torch.Tensor | None) -> torch.Tensor:
    """Average fixed lists of vertices: ``y[b, c, v] = mean_k x[b, c, bags[v, k]]``.

    Parameters
    ----------
    x : Tensor
        (B, C, V_in).
    bags : Tensor
        (V_out, K) int32 or int64 table; a vertex listed twice in a row counts twice.
    matrix_t : Tensor or None
        the transposed averaging matrix, (V_in, V_out) sparse CSR
        (:func:`averaging_matrix_t`), used by the backward pass; None where no gradient is needed.

    Returns
    -------
    Tensor
        (B, C, V_out), a strided view of vertex-major rows (``.contiguous()`` gives channels-first
        memory where a caller needs it).
    """
    return _BagMean.apply(x, bags, matrix_t)


def averaging_matrix_t(bags: np.ndarray, n_in: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The transpose of the averaging matrix of ``bags``, as a torch sparse CSR tensor (n_in, V_out).

    The averaging matrix M (V_out, n_in) has row ``v`` average the inputs listed in ``bags[v]``
    (V_out, K); a vertex listed twice counts twice (a pentagon's repeated centre in a 7-slot ring),
    so ``M[v, u] = (times u is in bags[v]) / K``. Indices are int32 (every mesh has < 2**31 entries).
    """
    n_out, k = bags.shape
    # Entries (u, v) of M^T, counted with multiplicity: one sorted key per entry, then run lengths.
    keys = bags.astype(np.int64).reshape(-1) * n_out + np.repeat(np.arange(n_out, dtype=np.int64), k)
    keys, counts = np.unique(keys, return_counts=True)
    rows, cols = np.divmod(keys, n_out)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n_in))])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse.*")
        return torch.sparse_csr_tensor(
            torch.from_numpy(indptr.astype(np.int32)), torch.from_numpy(cols.astype(np.int32)),
            torch.from_numpy(counts / k).to(dtype), size=(n_in, n_out))


class _GroupNormLeakyReLU(torch.autograd.Function):
    """y = leaky_relu(GroupNorm(x)) saving only y: the backward pass inverts the activation and the
    affine map to recover the normalised input, so the pre-activation tensor is never kept
    (the in-place activated normalisation of Rota Bulo et al., CVPR 2018, for GroupNorm).
    On CPU, vertex-major input (a convolution's output) stays vertex-major: the GroupNorm kernels run
    in their channels-last form, and the next convolution gathers its rows without a transposed copy."""

    @staticmethod
    def forward(ctx, x, weight, bias, groups, eps, slope):
        batch, channels, n = x.shape
        y, _, rstd = torch.ops.aten.native_group_norm(_kernel_view(x), weight, bias, batch, channels, n, groups, eps)
        y = y.view(batch, channels, n) if y.dim() == 3 else y.squeeze(3)
        torch.nn.functional.leaky_relu_(y, slope)
        ctx.save_for_backward(y, weight, bias, rstd)
        ctx.groups, ctx.slope = groups, slope
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        y, weight, bias, rstd = ctx.saved_tensors
        batch, channels, n = y.shape
        groups, slope = ctx.groups, ctx.slope
        # The activation's gradient, read off its output (same sign as its input), in y's layout.
        grad_z = _in_layout_of(torch.ops.aten.leaky_relu_backward(grad_y, y, slope, True), y)
        # Undo the activation (a leaky ReLU of slope 1/slope) and the affine map: the input up to its
        # group mean, x' = x_hat / rstd, which the fused GroupNorm backward below normalises again
        # with a mean of 0. Three passes in all instead of a dozen element-wise ones.
        x_prime = _in_layout_of(torch.nn.functional.leaky_relu(y, 1.0 / slope), y)
        per_channel_rstd = rstd.view(batch, groups).repeat_interleave(channels // groups, dim=1)     # (B, C)
        scale = 1.0 / (_safe_scale(weight).view(1, channels) * per_channel_rstd)     # (B, C)
        x_prime.sub_(bias.view(1, channels, 1)).mul_(scale.unsqueeze(2))
        grad_x, grad_weight, grad_bias = torch.ops.aten.native_group_norm_backward(
            _kernel_view(grad_z), _kernel_view(x_prime), torch.zeros_like(rstd), rstd, weight, batch, channels, n,
            groups, [True, True, True])
        grad_x = grad_x.view(batch, channels, n) if grad_x.dim() == 3 else grad_x.squeeze(3)
        return grad_x, grad_weight, grad_bias, None, None, None


def _is_vertex_major(x: torch.Tensor) -> bool:
    """Whether the (B, C, V) tensor ``x`` is a view of dense vertex-major (B, V, C) memory."""
    batch, channels, n = x.shape
    return channels > 1 and x.stride(1) == 1 and x.stride(2) == channels and (batch == 1 or x.stride(0) == n * channels)


def _kernel_view(x: torch.Tensor) -> torch.Tensor:
    """(B, C, V) as the GroupNorm kernels take it: vertex-major memory on CPU as a channels-last
    (B, C, V, 1) view, anything else as a contiguous (B, C, V) tensor (the CUDA kernels need that)."""
    if x.device.type == "cpu" and _is_vertex_major(x):
        batch, channels, n = x.shape
        return x.as_strided((batch, channels, n, 1), (n * channels, 1, channels, channels))
    return x.contiguous()


def _in_layout_of(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``x`` in ``reference``'s layout (vertex-major or contiguous channels-first), copied only if needed."""
    if _is_vertex_major(reference):
        return x if _is_vertex_major(x) else x.transpose(1, 2).contiguous().transpose(1, 2)
    return x.contiguous()


def _safe_scale(weight: torch.Tensor, floor: float = 1e-4) -> torch.Tensor:
    # A scale of exactly zero would make the normalised input unrecoverable; keep its magnitude
    # above ``floor`` (only the backward pass sees this; trained scales are far from it).
    return torch.where(weight.abs() < floor, torch.full_like(weight, floor) * torch.where(weight < 0, -1.0, 1.0),
                       weight)


def group_norm_leaky_relu(x: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor,
                          eps: float = 1e-5, slope: float = 0.2) -> torch.Tensor:
    """``leaky_relu(group_norm(x, groups, weight, bias, eps), slope)`` that stores only its output.

    Parameters
    ----------
    x : Tensor
        (B, C, V).
    weight, bias : Tensor
        (C,) the GroupNorm affine parameters.
    groups : int
        divides C.

    Returns
    -------
    Tensor
        (B, C, V), equal to the unfused modules; gradients equal them while ``|weight| >= 1e-4``.
        Vertex-major input gives vertex-major output on CPU; otherwise the output is channels-first.
    """
    return _GroupNormLeakyReLU.apply(x, weight.to(x.dtype), bias.to(x.dtype), groups, eps, slope)
