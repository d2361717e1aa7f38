"""surfharm's z-score, Nyul and WhiteStripe against the intensity-normalization package (when installed).

Tolerances are those of benchmarks/bench_volumetric.py: z-score and Nyul compute the same formulas
(1e-4); WhiteStripe uses another histogram smoother, so its stripe mean agrees within 1 %.
"""
import numpy as np
import pytest

inorm = pytest.importorskip("intensity_normalization", reason="the peer package intensity-normalization is not "
                            "installed (pip install intensity-normalization==3.0.1 in the benchmark environment)")

from surfharm.harmonize.volumetric import Nyul, WhiteStripe, ZScore  # noqa: E402


def _scans(n=4, shape=(24, 26, 22)):
    rng = np.random.default_rng(0)
    mask = np.zeros(shape, bool)
    mask[3:-3, 3:-3, 3:-3] = True
    scans = []
    for i in range(n):
        labels = rng.choice(3, size=mask.sum(), p=[0.15, 0.4, 0.45])
        values = rng.normal(np.array([0.3, 0.62, 0.86])[labels], np.array([0.04, 0.05, 0.03])[labels])
        vol = np.zeros(shape, np.float32)
        vol[mask] = (300 + 200 * i) * np.clip(values, 0.01, None) ** (0.8 + 0.15 * i)
        scans.append(vol)
    return scans, mask


def test_zscore_and_nyul_match_the_peer():
    scans, mask = _scans()
    wrap, fmask = inorm.create_image, mask.astype(np.float32)
    for vol in scans:
        theirs = inorm.ZScoreNormalizer().fit_transform(wrap(vol), wrap(fmask)).get_data()
        np.testing.assert_allclose(ZScore().transform([vol], masks=[mask])[0][mask], theirs[mask], atol=1e-4)
    peer = inorm.NyulNormalizer()
    peer.fit_population([wrap(v) for v in scans], [wrap(fmask)] * len(scans))
    ours = Nyul().fit(scans, masks=mask)
    np.testing.assert_allclose(ours.standard_scale_, peer.standard_scale, atol=1e-6)
    for vol, out in zip(scans, ours.transform(scans, masks=mask)):
        np.testing.assert_allclose(out[mask], peer.transform(wrap(vol), wrap(fmask)).get_data()[mask], atol=1e-3)


def test_white_stripe_matches_the_peer_within_tolerance():
    scans, mask = _scans()
    for vol in scans:
        peer = inorm.WhiteStripeNormalizer().fit(inorm.create_image(vol), inorm.create_image(mask.astype(np.float32)))
        mean, _ = WhiteStripe().stripe_stats(vol[mask].astype(np.float64))
        assert mean == pytest.approx(peer.mean, rel=0.01)
