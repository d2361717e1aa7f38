"""Topology tables against independent constructions from the faces (levels 0-4) and level-7 sanity."""
import numpy as np
import pytest

import spherical_ops as so
from spherical_ops import topology


def neighbour_sets(level):
    """Adjacency built with plain Python sets from the face list."""
    ico = so.icosphere(level)
    sets = [set() for _ in range(ico.n_vertices)]
    for a, b, c in ico.faces:
        sets[a] |= {b, c}
        sets[b] |= {a, c}
        sets[c] |= {a, b}
    return sets


def oriented_faces(level):
    ico = so.icosphere(level)
    return {tuple(np.roll(f, -i)) for f in ico.faces.tolist() for i in range(3)}


@pytest.mark.parametrize("level", range(5))
def test_one_ring_matches_faces_in_counter_clockwise_order(level):
    ring = topology.neighbors_1ring(level)
    sets, faces = neighbour_sets(level), oriented_faces(level)
    assert ring.shape == (so.n_vertices(level), 7)
    for v, row in enumerate(ring):
        assert row[6] == v
        degree = len(sets[v])
        assert degree == (5 if v < 12 else 6)
        assert set(row[:degree]) == sets[v]
        if degree == 5:
            assert row[5] == v                          # pentagon: centre repeated in slot 5
        for i in range(degree):                          # consecutive neighbours span a face (v, n_i, n_i+1)
            assert (v, row[i], row[(i + 1) % degree]) in faces


@pytest.mark.parametrize("level", range(5))
def test_two_ring_is_graph_distance_two(level):
    ring2 = topology.neighbors_2ring(level)
    sets = neighbour_sets(level)
    assert ring2.shape == (so.n_vertices(level), 19)
    np.testing.assert_array_equal(ring2[:, :6], topology.neighbors_1ring(level)[:, :6])
    for v, row in enumerate(ring2):
        second = set().union(*(sets[n] for n in sets[v])) - sets[v] - {v}
        real = [x for x in row[6:18] if x != v]
        assert set(real) == second and len(real) == len(second)
        assert row[18] == v


@pytest.mark.parametrize("level", [1, 3, 7])
def test_pooling_rows_are_the_fine_rings_of_coarse_vertices(level):
    pool = topology.pooling_index(level)
    assert pool.shape == (so.n_vertices(level - 1), 7)
    np.testing.assert_array_equal(pool, topology.neighbors_1ring(level)[: so.n_vertices(level - 1)])
    # every new vertex is pooled by exactly its two parents' rings
    counts = np.bincount(pool[:, :6][pool[:, :6] >= so.n_vertices(level - 1)], minlength=so.n_vertices(level))
    assert (counts[so.n_vertices(level - 1):] == 2).all()


def test_upconv_slots_point_back_to_each_vertex():
    level = 3
    slots = topology.upconv_slots(level)
    ring = topology.neighbors_1ring(level)
    for u, row in enumerate(slots):
        for pos in row:
            coarse, slot = divmod(int(pos), 7)
            assert ring[coarse, slot] == u


def test_level7_tables_shapes():
    assert topology.neighbors_1ring(7).shape == (163842, 7)
    assert topology.neighbors_2ring(7).shape == (163842, 19)
    assert topology.upsampling_parents(7).shape == (163842 - 40962, 2)
    assert topology.neighbors_1ring(7).max() == 163841


def test_network_build_does_not_keep_meshes_it_computed():
    """Layers keep int32 torch copies of the tables; the float64 meshes and int64 tables computed for
    them are dropped, while what the caller had cached before stays cached."""
    from spherical_ops import mesh
    from spherical_ops.nn import IcoUNet, _shared_bags, _shared_index, _shared_matrix_t, _shared_transpose

    for cache in (_shared_index, _shared_transpose, _shared_bags, _shared_matrix_t, mesh._build, topology.adjacency,
                  topology.neighbors_1ring, topology.pooling_index, topology.upconv_slots):
        cache.cache_clear()
    so.icosphere(2)                                     # cached by the caller before the build
    IcoUNet(1, 1, 4, depth=3, base_channels=4)
    assert [mesh._build.cache_contains(level) for level in range(5)] == [True, True, True, False, False]
    assert not any(topology.neighbors_1ring.cache_contains(level) for level in range(5))
    # Outside a build, calls are cached as before.
    ring = topology.neighbors_1ring(4)
    assert topology.neighbors_1ring(4) is ring and mesh._build.cache_contains(4)
