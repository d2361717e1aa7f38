"""Spherical layers against slow, obviously-correct loop references (levels 0-3), invariants and errors."""
import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

import spherical_ops as so
from spherical_ops import IcoConv, IcoPool, IcoUNet, IcoUpConv, IcoUpsample, topology



@pytest.fixture(autouse=True)
def float64_by_default():
    """Exact comparisons in float64, restored afterwards so other test modules are not affected."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def loop_conv(x, weight, bias, table):
    """y[:, :, v] = bias + sum_k weight[:, :, k] @ x[:, :, table[v, k]], one vertex at a time."""
    cols = []
    for v in range(table.shape[0]):
        acc = bias.view(1, -1).expand(x.shape[0], -1).clone() if bias is not None else 0
        for k in range(table.shape[1]):
            acc = acc + x[:, :, int(table[v, k])] @ weight[:, :, k].t()
        cols.append(acc)
    return torch.stack(cols, dim=2)


def loop_pool(x, level, mode):
    table = topology.neighbors_1ring(level)
    cols = []
    for i in range(so.n_vertices(level - 1)):
        vals = torch.stack([x[:, :, int(j)] for j in table[i]], dim=-1)
        cols.append(vals.mean(-1) if mode == "mean" else vals.max(-1).values)
    return torch.stack(cols, dim=2)


def loop_upsample(x, level):
    parents = so.upsample_parents(level + 1)
    cols = [x[:, :, i] for i in range(x.shape[2])]
    cols += [(x[:, :, int(a)] + x[:, :, int(b)]) / 2 for a, b in parents]
    return torch.stack(cols, dim=2)


def loop_upconv(x, weight, bias, level, out_channels):
    """Each coarse vertex emits one vector per fine-ring slot; new vertices average their parents'."""
    ring = topology.neighbors_1ring(level + 1)
    w = weight.view(7, out_channels, -1)
    n_coarse = x.shape[2]
    cols = [x[:, :, i] @ w[6].t() for i in range(n_coarse)]
    for u, (a, b) in enumerate(so.upsample_parents(level + 1), start=n_coarse):
        ka = int(np.where(ring[a] == u)[0][0])
        kb = int(np.where(ring[b] == u)[0][0])
        cols.append((x[:, :, int(a)] @ w[ka].t() + x[:, :, int(b)] @ w[kb].t()) / 2)
    return torch.stack(cols, dim=2) + bias.view(1, -1, 1)


def grads(fn, *tensors, seed=0):
    """Gradients of a fixed random projection of fn's output with respect to ``tensors``."""
    for t in tensors:
        t.grad = None
    out = fn()
    torch.manual_seed(seed)
    (out * torch.randn(out.shape, dtype=out.dtype)).sum().backward()   # contiguous: same values for any layout
    return out.detach(), [t.grad.clone() for t in tensors]


@pytest.mark.parametrize("level", [0, 1, 2, 3])
@pytest.mark.parametrize("ring", [1, 2])
def test_ico_conv_matches_loop_reference(level, ring):
    torch.manual_seed(level)
    conv = IcoConv(3, 4, level, ring=ring)
    x = torch.randn(2, 3, so.n_vertices(level), requires_grad=True)
    table = topology.neighbors_1ring(level) if ring == 1 else topology.neighbors_2ring(level)
    y_fast, g_fast = grads(lambda: conv(x), x, conv.weight, conv.bias)
    y_ref, g_ref = grads(lambda: loop_conv(x, conv.weight, conv.bias, table), x, conv.weight, conv.bias)
    torch.testing.assert_close(y_fast, y_ref)
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("c_in, c_out, level", [(2, 3, 5), (256, 4, 3), (4, 256, 3)])
def test_ico_conv_tiles_match_one_shot(monkeypatch, c_in, c_out, level):
    """Level 5 spans several CPU tiles, and so does level 3 where 256 channels make the rows wide
    (the forward tiles by input width, the backward by output width); the result must not depend on
    the tile size."""
    from spherical_ops import functional
    row_bytes = 7 * max(c_in, c_out) * 4
    assert functional._tile_size(torch.device("cpu"), so.n_vertices(level), row_bytes) < so.n_vertices(level)
    torch.manual_seed(1)
    conv = IcoConv(c_in, c_out, level)
    x = torch.randn(1, c_in, so.n_vertices(level), requires_grad=True)
    y_tiled, g_tiled = grads(lambda: conv(x), x, conv.weight)
    monkeypatch.setattr(functional, "CPU_TILE", 10 ** 9)
    monkeypatch.setattr(functional, "CPU_TILE_BYTES", 10 ** 12)
    y_one, g_one = grads(lambda: conv(x), x, conv.weight)
    torch.testing.assert_close(y_tiled, y_one)
    for a, b in zip(g_tiled, g_one):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("ring", [1, 2])
def test_transpose_table_lists_every_slot_once(ring):
    """reverse + extras hold exactly the (u, k, v) triples of the table, each once."""
    from spherical_ops import topology
    from spherical_ops.functional import transpose_table
    index = (topology.neighbors_1ring if ring == 1 else topology.neighbors_2ring)(3)
    n, k = index.shape
    reverse, extras = transpose_table(index, n)
    assert reverse.shape == (n, k) and extras.shape[1] == 3
    u, slot = np.nonzero(reverse < n)
    found = set(zip(u.tolist(), slot.tolist(), reverse[u, slot].tolist())) | set(map(tuple, extras.tolist()))
    expected = {(int(index[v, s]), s, v) for v in range(n) for s in range(k)}
    assert found == expected
    assert len(u) + len(extras) == n * k                      # no triple listed twice
    assert len(extras) > 0                                    # the extras path is exercised at level 3


@pytest.mark.parametrize("counted", [False, True])
@pytest.mark.parametrize("ring", [1, 2])
def test_conv_gradient_by_gather_equals_scatter(ring, counted):
    """The input gradient through the transpose table (extras per slot given or counted in the
    backward pass) equals the index_add_ fallback (B = 2)."""
    from spherical_ops.functional import neighborhood_conv
    torch.manual_seed(3)
    conv = IcoConv(3, 4, 3, ring=ring)
    reverse, extras, per_slot = conv.transpose_tables()
    assert sum(per_slot) == extras.shape[0] > 0
    x = torch.randn(2, 3, so.n_vertices(3), requires_grad=True)
    transpose = (reverse, extras) + ((per_slot,) if counted else ())
    y1, g1 = grads(lambda: neighborhood_conv(x, conv.weight, conv.bias, conv.index, transpose), x, conv.weight)
    y2, g2 = grads(lambda: neighborhood_conv(x, conv.weight, conv.bias, conv.index), x, conv.weight)
    torch.testing.assert_close(y1, y2)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("c_in, c_out", [(3, 4), (4, 3)])
def test_conv_weight_gradient_without_input_gradient(c_in, c_out):
    """A first layer (input without grad) takes either weight-gradient path; both equal the fallback."""
    from spherical_ops.functional import neighborhood_conv
    torch.manual_seed(4)
    conv = IcoConv(c_in, c_out, 3)
    x = torch.randn(2, c_in, so.n_vertices(3))
    transpose = conv.transpose_tables()[:2]
    y1, g1 = grads(lambda: neighborhood_conv(x, conv.weight, conv.bias, conv.index, transpose), conv.weight, conv.bias)
    y2, g2 = grads(lambda: neighborhood_conv(x, conv.weight, conv.bias, conv.index), conv.weight, conv.bias)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("level", [1, 2, 3])
@pytest.mark.parametrize("mode", ["mean", "max"])
def test_ico_pool_matches_loop_reference(level, mode):
    torch.manual_seed(0)
    x = torch.randn(2, 3, so.n_vertices(level), requires_grad=True)
    pool = IcoPool(level, mode)
    y_fast, (g_fast,) = grads(lambda: pool(x), x)
    y_ref, (g_ref,) = grads(lambda: loop_pool(x, level, mode), x)
    assert y_fast.shape == (2, 3, so.n_vertices(level - 1))
    torch.testing.assert_close(y_fast, y_ref)
    torch.testing.assert_close(g_fast, g_ref)


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_ico_upsample_matches_loop_reference(level):
    torch.manual_seed(0)
    x = torch.randn(2, 3, so.n_vertices(level), requires_grad=True)
    up = IcoUpsample(level)
    y_fast, (g_fast,) = grads(lambda: up(x), x)
    y_ref, (g_ref,) = grads(lambda: loop_upsample(x, level), x)
    torch.testing.assert_close(y_fast, y_ref)
    torch.testing.assert_close(g_fast, g_ref)


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_ico_upconv_matches_loop_reference(level):
    torch.manual_seed(level)
    up = IcoUpConv(3, 2, level)
    x = torch.randn(2, 3, so.n_vertices(level), requires_grad=True)
    y_fast, g_fast = grads(lambda: up(x), x, up.weight, up.bias)
    y_ref, g_ref = grads(lambda: loop_upconv(x, up.weight, up.bias, level, 2), x, up.weight, up.bias)
    assert y_fast.shape == (2, 2, so.n_vertices(level + 1))
    torch.testing.assert_close(y_fast, y_ref)
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("layer", [IcoPool(4, "mean"), IcoPool(4, "max"), IcoUpsample(3)])
def test_constant_field_stays_constant(layer):
    x = torch.full((1, 2, so.n_vertices(layer.level)), 3.25)
    torch.testing.assert_close(layer(x), torch.full_like(layer(x), 3.25))


def test_centre_only_weights_make_a_per_vertex_linear_map():
    torch.manual_seed(0)
    conv = IcoConv(3, 5, 3)
    with torch.no_grad():
        conv.weight[:, :, :6] = 0
    x = torch.randn(2, 3, so.n_vertices(3))
    expected = torch.einsum("oc,bcv->bov", conv.weight[:, :, 6], x) + conv.bias.view(1, -1, 1)
    torch.testing.assert_close(conv(x), expected)


def rotation_permutation(rotation, level):
    """perm such that rotating the mesh maps vertex i onto vertex perm[i] (None if not a symmetry)."""
    vertices = so.icosphere(level).vertices
    dist, perm = cKDTree(vertices).query(vertices @ rotation.T)
    return perm if dist.max() < 1e-9 else None


def axis_rotation(axis, angle):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def icosahedral_rotations():
    ico = so.icosphere(0)
    v, f = ico.vertices, ico.faces
    yield axis_rotation(v[0], 2 * np.pi / 5)                       # 5-fold, through a vertex
    yield axis_rotation(v[3], 4 * np.pi / 5)                       # 5-fold, another vertex
    yield axis_rotation(v[f[7]].mean(0), 2 * np.pi / 3)            # 3-fold, through a face centre
    yield axis_rotation(v[0] + v[3], np.pi)                        # 2-fold, through an edge midpoint


@pytest.mark.parametrize("rotation", list(icosahedral_rotations()))
def test_isotropic_conv_commutes_with_icosahedral_rotations(rotation):
    level = 3
    perm = rotation_permutation(rotation, level)
    assert perm is not None and np.unique(perm).size == perm.size
    torch.manual_seed(0)
    conv = IcoConv(2, 3, level)
    with torch.no_grad():                                           # tie the six neighbour weights
        conv.weight[:, :, :6] = conv.weight[:, :, :1]
    x = torch.randn(1, 2, so.n_vertices(level))
    rotated = torch.empty_like(x)
    rotated[:, :, perm] = x                                          # field carried along by the rotation
    out_rot = torch.empty_like(x[:, :1].expand(1, 3, -1)).clone()
    out_rot[:, :, perm] = conv(x)
    torch.testing.assert_close(conv(rotated), out_rot)


def test_unet_shapes_levels_and_parameter_count():
    net = IcoUNet(2, 3, level=4, depth=3, base_channels=8)
    x = torch.randn(2, 2, so.n_vertices(4))
    assert net(x).shape == (2, 3, so.n_vertices(4))
    assert sum(p.numel() for p in IcoUNet(1, 1, 7).parameters()) == 1_682_097


@pytest.mark.slow
def test_unet_overfits_a_smooth_target_quickly():
    torch.manual_seed(0)
    net = IcoUNet(1, 1, level=3, depth=3, base_channels=8).float()
    vertices = torch.tensor(so.icosphere(3).vertices, dtype=torch.float32)
    x = vertices[:, 2].view(1, 1, -1)
    target = (vertices[:, 0] * vertices[:, 1]).view(1, 1, -1)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    first = None
    for _ in range(150):
        opt.zero_grad()
        loss = torch.mean((net(x) - target) ** 2)
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.05 * first


def test_state_dict_holds_only_weights_and_buffers_follow_dtype():
    net = IcoUNet(1, 1, level=3, depth=2, base_channels=4)
    x = torch.randn(1, 1, so.n_vertices(3), dtype=torch.float64)
    net.double()(x).sum().backward()                    # makes the backward tables too
    keys = net.state_dict().keys()
    assert not any(k.endswith(("index", "bags", "matrix_t", "extras")) for k in keys)
    assert net.float()(x.float()).dtype == torch.float32
    assert net.down[1][0].matrix_t.dtype == torch.float32


def test_backward_tables_are_made_only_when_a_gradient_is_needed():
    """Inference holds no table read backwards and no transposed averaging matrix; the first pass
    that records gradients makes them once, shared between layers of the same level."""
    net = IcoUNet(1, 1, level=3, depth=3, base_channels=4)
    x = torch.randn(1, 1, so.n_vertices(3))
    convs = [m for m in net.modules() if isinstance(m, IcoConv)]
    averaging = [m for m in net.modules() if isinstance(m, (IcoPool, IcoUpConv))]
    with torch.inference_mode():
        net(x)
    with torch.no_grad():
        net(x)
    assert all(c.reverse_index is None for c in convs) and all(m.matrix_t is None for m in averaging)
    expected = net(x).detach()
    net(x).sum().backward()
    assert all(c.reverse_index is not None for c in convs) and all(m.matrix_t is not None for m in averaging)
    same_level = [c for c in convs if c.level == 3]
    assert len({c.reverse_index.data_ptr() for c in same_level}) == 1
    torch.testing.assert_close(net(x), expected)
    # A frozen network with an input that needs no gradient records nothing either.
    frozen = IcoUNet(1, 1, level=3, depth=2, base_channels=4).requires_grad_(False)
    frozen(x)
    assert all(c.reverse_index is None for c in frozen.modules() if isinstance(c, IcoConv))


def test_bag_mean_without_matrix_names_what_the_gradient_needs():
    from spherical_ops.functional import bag_mean
    pool = IcoPool(2)
    x = torch.randn(1, 2, so.n_vertices(2))
    assert bag_mean(x, pool.bags, None).shape == (1, 2, so.n_vertices(1))
    with pytest.raises(ValueError, match="needs matrix_t"):
        bag_mean(x.requires_grad_(True), pool.bags, None)


@pytest.mark.parametrize("make, shape, match", [
    (lambda: IcoConv(3, 4, 2), (1, 3, 100), "162 vertices, got 100"),
    (lambda: IcoConv(3, 4, 2), (1, 3, 642), "level 3"),
    (lambda: IcoConv(3, 4, 2), (1, 2, 162), "3 input channels"),
    (lambda: IcoConv(3, 4, 2), (3, 162), "3-D tensor"),
    (lambda: IcoUNet(1, 1, 3, depth=2), (1, 1, 2562), "expects 642 vertices"),
])
def test_bad_inputs_name_what_was_expected(make, shape, match):
    with pytest.raises(ValueError, match=match):
        make()(torch.zeros(shape))


def test_integer_input_and_bad_constructor_arguments():
    with pytest.raises(TypeError, match="floating-point"):
        IcoConv(1, 1, 1)(torch.zeros(1, 1, 42, dtype=torch.int64))
    with pytest.raises(ValueError, match="ring"):
        IcoConv(1, 1, 1, ring=3)
    with pytest.raises(ValueError, match="level 0"):
        IcoPool(0)
    with pytest.raises(ValueError, match="depth 5 needs level >= 4"):
        IcoUNet(1, 1, level=3)
    with pytest.raises(ValueError, match="in_channels"):
        IcoConv(0, 1, 1)


def test_repr_shows_level_and_channels():
    assert "level=5" in repr(IcoConv(3, 8, 5)) and "3, 8" in repr(IcoConv(3, 8, 5))


@pytest.mark.parametrize("vertex_major", [False, True])
@pytest.mark.parametrize("groups, channels", [(4, 8), (2, 2), (3, 3)])
def test_fused_group_norm_leaky_relu_equals_the_separate_modules(groups, channels, vertex_major):
    from spherical_ops.nn import GroupNormLeakyReLU
    torch.manual_seed(0)
    fused = GroupNormLeakyReLU(groups, channels)
    with torch.no_grad():
        fused.weight.uniform_(-2, 2)      # negative scales too: the inversion must handle their sign
        fused.bias.uniform_(-1, 1)
    plain = torch.nn.GroupNorm(groups, channels)
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(2, channels, 162)
    if vertex_major:                    # a convolution's output: (B, C, V) view of (B, V, C) memory
        x = x.transpose(1, 2).contiguous().transpose(1, 2)
    x.requires_grad_(True)
    y_fused, g_fused = grads(lambda: fused(x), x, fused.weight, fused.bias)
    assert (y_fused.stride(1) == 1) == (vertex_major and channels > 1)     # the layout is kept
    y_plain, g_plain = grads(lambda: torch.nn.functional.leaky_relu(plain(x), 0.2), x, plain.weight, plain.bias)
    torch.testing.assert_close(y_fused, y_plain)
    for a, b in zip(g_fused, g_plain):
        torch.testing.assert_close(a, b)



@pytest.mark.parametrize("make", [lambda: IcoConv(3, 5, 2), lambda: IcoPool(2), lambda: IcoUpConv(3, 5, 2),
                                  lambda: IcoUNet(3, 2, 2, depth=2, base_channels=4)])
def test_layers_give_the_same_values_and_gradients_in_either_input_layout(make):
    """Layers return vertex-major views and take any layout: a vertex-major input (what the layers
    pass on) and a channels-first one give the same outputs and gradients; the U-Net's output is
    channels-first memory."""
    torch.manual_seed(1)
    layer = make().double()
    level = layer.level
    x = torch.randn(2, 3, so.n_vertices(level), dtype=torch.float64)
    x_rows = x.transpose(1, 2).contiguous().transpose(1, 2)
    results = []
    for inp in (x.clone().requires_grad_(True), x_rows.clone().requires_grad_(True)):
        y = layer(inp)
        layer.zero_grad()
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view(y.shape)).sum().backward()
        results.append((y.detach(), inp.grad, [p.grad.clone() for p in layer.parameters()]))
    (y1, gx1, gp1), (y2, gx2, gp2) = results
    torch.testing.assert_close(y1, y2)
    torch.testing.assert_close(gx1, gx2)
    for a, b in zip(gp1, gp2):
        torch.testing.assert_close(a, b)
    if isinstance(layer, IcoUNet):
        assert y1.is_contiguous()
    else:
        assert y1.stride(1) == 1                        # channels innermost: rows of vertices


@pytest.mark.parametrize("with_transpose", [True, False])
def test_conv_of_several_inputs_equals_conv_of_their_concatenation(with_transpose):
    """conv(a, b) == conv(cat([a, b])) in values and in every gradient, through the transpose-table
    backward and the scatter fallback."""
    from spherical_ops.functional import neighborhood_conv
    torch.manual_seed(5)
    conv = IcoConv(5, 4, 3).double()
    a = torch.randn(2, 2, so.n_vertices(3), dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 3, so.n_vertices(3), dtype=torch.float64).transpose(1, 2).contiguous().transpose(1, 2)
    b.requires_grad_(True)
    transpose = conv.transpose_tables() if with_transpose else None
    y1, g1 = grads(lambda: neighborhood_conv((a, b), conv.weight, conv.bias, conv.index, transpose),
                   a, b, conv.weight, conv.bias)
    y2, g2 = grads(lambda: neighborhood_conv(torch.cat([a, b], 1), conv.weight, conv.bias, conv.index, transpose),
                   a, b, conv.weight, conv.bias)
    torch.testing.assert_close(y1, y2)
    for got, expected in zip(g1, g2):
        torch.testing.assert_close(got, expected)
    torch.testing.assert_close(conv(a, b), y2)


def test_conv_of_several_inputs_names_what_does_not_concatenate():
    conv = IcoConv(5, 4, 2)
    a, b = torch.zeros(1, 2, 162), torch.zeros(1, 2, 162)
    with pytest.raises(ValueError, match=r"concatenate to \(B, 5, 162\).*\[\(1, 2, 162\), \(1, 2, 162\)\]"):
        conv(a, b)
    with pytest.raises(ValueError, match="input 2 of 2.*expects 162 vertices, got 642"):
        conv(a, torch.zeros(1, 3, 642))


def test_building_and_running_a_network_loads_no_scipy():
    """scipy costs ~14 MB of resident memory on import; a 1-ring network needs none of it."""
    import subprocess
    import sys
    code = ("import sys, torch; from spherical_ops import IcoUNet; "
            "IcoUNet(1, 1, 3, depth=2, base_channels=4)(torch.zeros(1, 1, 642)).sum().backward(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'scipy'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
