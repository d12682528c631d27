"""The baseline objectives and MUSIC against float64 numpy transliterations of the official
code, written here independently and following each reference's structure:
MUSIC ``niuchuangnn/IMSVD`` imsvd.py (IMSVD.forward), SimSiam ``facebookresearch/simsiam``
(-CosineSimilarity), BYOL ``deepmind/byol`` (regression_loss), Barlow Twins
``facebookresearch/barlowtwins`` main.py, VICReg ``facebookresearch/vicreg`` main_vicreg.py,
SwAV ``facebookresearch/swav`` main_swav.py (distributed_sinkhorn and the loss loop), SimCLR
``google-research/simclr`` objective.py (add_contrastive_loss)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mecjax.losses import (barlow_twins_loss, byol_loss, infonce_loss, mec_loss, music_loss,
                           music_terms, simsiam_loss, sinkhorn, swav_loss, vicreg_loss,
                           vicreg_terms)


# ----------------------------------------------------------------------------- references

def np_normalize(x, eps=1e-12):
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


def np_softmax(x, axis):
  e = np.exp(x - x.max(axis=axis, keepdims=True))
  return e / e.sum(axis=axis, keepdims=True)


def np_log_softmax(x, axis=1):
  m = x.max(axis=axis, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def official_music(x1, x2, bin_size, t=1.0, ti_coeff=1.0):
  """IMSVD.forward after the projector (one process: the gather is the identity)."""
  ns, _ = x1.shape
  p1s = np.maximum(np_softmax(x1.reshape(ns, -1, bin_size) / t, 2), 1e-8).reshape(-1, bin_size)
  p2s = np.maximum(np_softmax(x2.reshape(ns, -1, bin_size) / t, 2), 1e-8).reshape(-1, bin_size)
  sim = (p1s * p2s).sum(axis=1)
  loss_ti = -np.log(sim).mean() * ti_coeff

  n, d = x1.shape
  num_blocks = d // bin_size
  p1 = np.maximum(np_softmax(x1.reshape(n, -1, bin_size) / t, 2), 1e-8).reshape(n, d)
  p2 = np.maximum(np_softmax(x2.reshape(n, -1, bin_size) / t, 2), 1e-8).reshape(n, d)
  p12 = np.einsum("np,nq->pq", p1, p2) / n
  p_diagonal = p12[np.arange(d), np.arange(d)]
  loss_dia = (p_diagonal * np.log(p_diagonal)).sum() / num_blocks
  # off_block_diagonal: (nb, bin, nb, bin) -> (nb, nb, bin, bin), blocks with i != j.
  blocks = p12.reshape(num_blocks, bin_size, num_blocks, bin_size).transpose(0, 2, 1, 3)
  idx1, idx2 = np.meshgrid(np.arange(num_blocks), np.arange(num_blocks), indexing="ij")
  keep = idx1.flatten() != idx2.flatten()
  p_off = blocks[idx1.flatten()[keep], idx2.flatten()[keep], ...].flatten()
  loss_off = (p_off * np.log(p_off)).sum() / (num_blocks * (num_blocks - 1))
  return loss_dia + loss_off + loss_ti, loss_dia, loss_off, loss_ti / ti_coeff


def official_cosine(x1, x2, eps=1e-8):
  """torch.nn.functional.cosine_similarity(dim=1)."""
  n1 = np.maximum(np.linalg.norm(x1, axis=1), eps)
  n2 = np.maximum(np.linalg.norm(x2, axis=1), eps)
  return (x1 * x2).sum(axis=1) / (n1 * n2)


def official_byol_regression(x, y):
  """byol_experiment.regression_loss with utils.l2_normalize (eps on the squared norm)."""
  nx = x / np.sqrt(np.maximum((x * x).sum(-1, keepdims=True), 1e-12))
  ny = y / np.sqrt(np.maximum((y * y).sum(-1, keepdims=True), 1e-12))
  return np.sum((nx - ny) ** 2, axis=-1)


def official_barlow(z1, z2, lambd=0.0051):
  def bn(z):  # BatchNorm1d(affine=False), training mode: biased variance, eps 1e-5
    return (z - z.mean(0)) / np.sqrt(z.var(0) + 1e-5)
  c = bn(z1).T @ bn(z2)
  c = c / z1.shape[0]
  on_diag = ((np.diagonal(c) - 1) ** 2).sum()
  n = c.shape[0]
  off_diag = (c.flatten()[:-1].reshape(n - 1, n + 1)[:, 1:].flatten() ** 2).sum()
  return on_diag + lambd * off_diag


def official_vicreg(x, y, sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0):
  def off_diagonal(m):
    n = m.shape[0]
    return m.flatten()[:-1].reshape(n - 1, n + 1)[:, 1:].flatten()
  batch_size, num_features = x.shape
  repr_loss = ((x - y) ** 2).mean()
  x = x - x.mean(0)
  y = y - y.mean(0)
  std_x = np.sqrt(x.var(0, ddof=1) + 0.0001)
  std_y = np.sqrt(y.var(0, ddof=1) + 0.0001)
  std_loss = np.mean(np.maximum(1 - std_x, 0)) / 2 + np.mean(np.maximum(1 - std_y, 0)) / 2
  cov_x = (x.T @ x) / (batch_size - 1)
  cov_y = (y.T @ y) / (batch_size - 1)
  cov_loss = ((off_diagonal(cov_x) ** 2).sum() / num_features +
              (off_diagonal(cov_y) ** 2).sum() / num_features)
  loss = sim_coeff * repr_loss + std_coeff * std_loss + cov_coeff * cov_loss
  return loss, repr_loss, std_loss, cov_loss


def official_sinkhorn(out, epsilon=0.05, iterations=3):
  q = np.exp(out / epsilon).T
  b = q.shape[1]
  k = q.shape[0]
  q = q / q.sum()
  for _ in range(iterations):
    q = q / q.sum(axis=1, keepdims=True)
    q = q / k
    q = q / q.sum(axis=0, keepdims=True)
    q = q / b
  q = q * b
  return q.T


def official_swav(outputs, codes, crops_for_assign, temperature=0.1):
  nmb_crops = len(outputs)
  loss = 0.0
  for i, crop_id in enumerate(crops_for_assign):
    q = codes[i]
    subloss = 0.0
    for v in np.delete(np.arange(nmb_crops), crop_id):
      x = outputs[v] / temperature
      subloss -= np.mean(np.sum(q * np_log_softmax(x, 1), axis=1))
    loss += subloss / (nmb_crops - 1)
  return loss / len(crops_for_assign)


def official_simclr(hidden1, hidden2, temperature, large_num=1e9):
  """add_contrastive_loss (hidden_norm=True, one replica); returns mean(loss_a + loss_b)."""
  hidden1, hidden2 = np_normalize(hidden1), np_normalize(hidden2)
  n = hidden1.shape[0]
  labels = np.eye(n, 2 * n)
  masks = np.eye(n)
  logits_aa = hidden1 @ hidden1.T / temperature - masks * large_num
  logits_bb = hidden2 @ hidden2.T / temperature - masks * large_num
  logits_ab = hidden1 @ hidden2.T / temperature
  logits_ba = hidden2 @ hidden1.T / temperature
  loss_a = -(labels * np_log_softmax(np.concatenate([logits_ab, logits_aa], 1))).sum(1)
  loss_b = -(labels * np_log_softmax(np.concatenate([logits_ba, logits_bb], 1))).sum(1)
  return np.mean(loss_a + loss_b)


# ----------------------------------------------------------------------------- helpers

def pair(rng, n, d, noise=0.7, scale=1.0):
  a = scale * rng.normal(size=(n, d))
  return a, a + noise * scale * rng.normal(size=(n, d))


def f64(fn, *arrays, **kw):
  with jax.enable_x64(True):
    out = fn(*(jnp.asarray(a, jnp.float64) for a in arrays), **kw)
    return jax.tree.map(lambda v: np.asarray(v, np.float64), out)


def f32(fn, *arrays, **kw):
  out = fn(*(jnp.asarray(a, jnp.float32) for a in arrays), **kw)
  return jax.tree.map(lambda v: np.asarray(v, np.float64), out)


def mesh8():
  assert len(jax.devices()) >= 8, "tests/conftest.py forces 8 CPU devices"
  return Mesh(np.asarray(jax.devices()[:8]), ("data",))


def sharded_and_single(fn, *arrays):
  """fn under jit on batch-sharded inputs (8 devices) and on one device."""
  mesh = mesh8()
  spec = NamedSharding(mesh, P("data"))
  xs = [jax.device_put(jnp.asarray(a, jnp.float32), spec) for a in arrays]
  assert all(len(x.sharding.device_set) == 8 for x in xs)
  one = [jax.device_put(jnp.asarray(a, jnp.float32), jax.devices()[0]) for a in arrays]
  return jax.jit(fn)(*xs), jax.jit(fn)(*one)


# ----------------------------------------------------------------------------- MUSIC

@pytest.mark.parametrize("n,segments,size,t", [(32, 4, 8, 1.0), (20, 3, 5, 0.5), (9, 2, 16, 2.0)])
def test_music_matches_official_float64(n, segments, size, t):
  rng = np.random.default_rng(n + segments + size)
  a, b = pair(rng, n, segments * size, scale=2.0)
  want = official_music(a, b, size, t=t, ti_coeff=0.7)
  got = f64(music_terms, a, b, segment_size=size, temperature=t, invariance_weight=0.7)
  np.testing.assert_allclose(
      [got["loss"], got["diagonal"], got["off_diagonal"], got["invariance"]], want,
      rtol=1e-9, atol=0)
  np.testing.assert_allclose(
      f64(music_loss, a, b, segment_size=size, temperature=t, invariance_weight=0.7),
      want[0], rtol=1e-9, atol=0)


def test_music_float32_within_1e5():
  rng = np.random.default_rng(5)
  a, b = pair(rng, 128, 6 * 16, scale=3.0)
  want = official_music(a, b, 16)
  got = f32(music_terms, a, b, segment_size=16)
  np.testing.assert_allclose(
      [got["loss"], got["diagonal"], got["off_diagonal"], got["invariance"]], want, rtol=1e-5)


def one_hot_logits(codes, size, sharpness=40.0):
  """(N, S) unit indices -> (N, S * size) logits peaked at those units."""
  n, s = codes.shape
  return (sharpness * np.eye(size)[codes]).reshape(n, s * size)


def test_music_ideal_code_reaches_minus_three_log_segment_size():
  # Every combination of units once: one-hot, views agree, segments uniform and independent.
  segments, size = 3, 4
  grid = np.stack(np.meshgrid(*[np.arange(size)] * segments, indexing="ij"), -1)
  x = one_hot_logits(grid.reshape(-1, segments), size)
  bounds = {"diagonal": -math.log(size), "off_diagonal": -2 * math.log(size),
            "invariance": 0.0, "loss": -3 * math.log(size)}
  # With the 1e-8 floor f on the off units: P_dd = (1 + (D_S-1) f²) / D_S, every off-block
  # cell ((1 + (D_S-1) f) / D_S)² (independence), and q1 · q2 = 1 + (D_S-1) f².
  f = 1e-8
  dd = (1 + (size - 1) * f * f) / size
  cell = ((1 + (size - 1) * f) / size) ** 2
  exact = {"diagonal": size * dd * math.log(dd), "off_diagonal": size ** 2 * cell * math.log(cell),
           "invariance": -math.log1p((size - 1) * f * f)}
  exact["loss"] = exact["diagonal"] + exact["off_diagonal"] + exact["invariance"]
  got = f64(music_terms, x, x, segment_size=size)
  for key, value in exact.items():
    np.testing.assert_allclose(got[key], value, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(got[key], bounds[key], atol=1e-6)
  got = f32(music_terms, x, x, segment_size=size)
  for key, value in bounds.items():
    np.testing.assert_allclose(got[key], value, atol=1e-5)


def test_music_copied_segments_lose_the_off_block_entropy():
  # Segments identical (fully dependent): each off-diagonal block is diag(1/D_S), entropy
  # ln D_S instead of 2 ln D_S, so the loss is -2 ln D_S (plus the floor's cells, exactly:
  # on the block diagonal (1 + (D_S-1) f²) / D_S, off it (2f + (D_S-2) f²) / D_S).
  segments, size, f = 4, 5, 1e-8
  codes = np.repeat(np.arange(size)[:, None], segments, axis=1)
  x = one_hot_logits(codes, size)
  got = f64(music_terms, x, x, segment_size=size)
  on, off = (1 + (size - 1) * f * f) / size, (2 * f + (size - 2) * f * f) / size
  want_off = size * on * math.log(on) + size * (size - 1) * off * math.log(off)
  np.testing.assert_allclose(got["off_diagonal"], want_off, rtol=1e-9)
  np.testing.assert_allclose(got["off_diagonal"], -math.log(size), atol=1e-5)
  np.testing.assert_allclose(got["loss"], -2 * math.log(size), atol=1e-5)


@pytest.mark.parametrize("scale", [0.1, 1.0, 5.0, 50.0])
def test_music_random_inputs_stay_above_the_bound(scale):
  size, segments = 6, 5
  bound = -3 * math.log(size)
  rng = np.random.default_rng(int(scale * 10))
  for noise in (0.0, 0.3, 3.0):
    a, b = pair(rng, 48, segments * size, noise=noise, scale=scale)
    got = f64(music_terms, a, b, segment_size=size)
    assert got["diagonal"] >= -math.log(size) - 1e-6
    assert got["off_diagonal"] >= -2 * math.log(size) - 1e-6
    assert got["invariance"] >= -1e-6
    assert got["loss"] > bound + 1e-3


def test_music_rejects_a_single_segment_and_ragged_width():
  x = jnp.zeros((4, 8))
  with pytest.raises(ValueError):
    music_loss(x, x, segment_size=8)
  with pytest.raises(ValueError):
    music_loss(x, x, segment_size=3)


# ----------------------------------------------------------------------------- SimSiam / BYOL

def test_simsiam_and_byol_match_official():
  rng = np.random.default_rng(7)
  p, z = pair(rng, 24, 40, scale=3.0)
  np.testing.assert_allclose(f64(simsiam_loss, p, z), -official_cosine(p, z).mean(),
                             rtol=1e-9, atol=0)
  np.testing.assert_allclose(f64(byol_loss, p, z), official_byol_regression(p, z).mean(),
                             rtol=1e-9, atol=0)
  np.testing.assert_allclose(f32(simsiam_loss, p, z), -official_cosine(p, z).mean(), rtol=1e-5)
  np.testing.assert_allclose(f32(byol_loss, p, z), official_byol_regression(p, z).mean(),
                             rtol=1e-5)


@pytest.mark.parametrize("fn,factor", [(simsiam_loss, -1.0), (byol_loss, -2.0)])
def test_siamese_gradient_flows_into_p_only(fn, factor):
  rng = np.random.default_rng(8)
  p, z = pair(rng, 16, 12)
  with jax.enable_x64(True):
    gp, gz = jax.grad(fn, argnums=(0, 1))(jnp.asarray(p), jnp.asarray(z))
  np.testing.assert_array_equal(np.asarray(gz), 0.0)
  # d cos(p, z) / dp = (ẑ - cos · p̂) / ||p||, and the loss is factor · mean cos.
  pn, zn = np_normalize(p), np_normalize(z)
  cos = (pn * zn).sum(1, keepdims=True)
  want = factor / p.shape[0] * (zn - cos * pn) / np.linalg.norm(p, axis=1, keepdims=True)
  np.testing.assert_allclose(np.asarray(gp), want, rtol=1e-9, atol=1e-15)


def test_mec_order_one_is_simsiam_and_byol_exactly():
  # mec_loss = -(lamda_inv / m) Tr(ẑ1 ẑ2ᵀ / lamda_inv) at order 1: lamda_inv cancels, leaving
  # -mean cos with constant factor 1 and offset 0, i.e. simsiam_loss; byol = 2 + 2 · it.
  rng = np.random.default_rng(9)
  a, b = pair(rng, 20, 30)
  cos = official_cosine(a, b).mean()
  sims = f64(simsiam_loss, a, b)
  for lamda_inv in (0.3, 1.0, 17.0):
    mec1 = f64(mec_loss, a, b, lamda_inv=lamda_inv, order=1)
    np.testing.assert_allclose(mec1, -cos, rtol=1e-12)
    np.testing.assert_allclose(mec1, sims, rtol=1e-12)
    np.testing.assert_allclose(f64(byol_loss, a, b), 2 + 2 * mec1, rtol=1e-12)


# ----------------------------------------------------------------------------- Barlow / VICReg

@pytest.mark.parametrize("n,d", [(32, 16), (10, 24)])
def test_barlow_twins_matches_official(n, d):
  rng = np.random.default_rng(n * d)
  a, b = pair(rng, n, d, scale=2.0)
  a += 3.0  # non-zero means: the standardisation must remove them
  for lambd in (0.0051, 0.5):
    want = official_barlow(a, b, lambd)
    np.testing.assert_allclose(f64(barlow_twins_loss, a, b, lambd=lambd), want, rtol=1e-9, atol=0)
    np.testing.assert_allclose(f32(barlow_twins_loss, a, b, lambd=lambd), want, rtol=1e-5)


@pytest.mark.parametrize("scale,hinge", [(0.3, True), (2.0, False)])
def test_vicreg_matches_official(scale, hinge):
  rng = np.random.default_rng(int(scale * 10))
  a, b = pair(rng, 40, 24, noise=0.5, scale=scale)
  a[:, :12] *= 4.0  # at scale 0.3 some dims above the hinge, some below
  kw = dict(sim_weight=25.0, var_weight=15.0, cov_weight=2.0)
  want = official_vicreg(a, b + 0.5, sim_coeff=25.0, std_coeff=15.0, cov_coeff=2.0)
  got = f64(vicreg_terms, a, b + 0.5, **kw)
  np.testing.assert_allclose(
      [got["loss"], got["invariance"], got["variance"], got["covariance"]], want,
      rtol=1e-9, atol=0)
  assert (want[2] > 0) == hinge  # the variance hinge is active, or all std above 1
  np.testing.assert_allclose(f64(vicreg_loss, a, b + 0.5, **kw), want[0], rtol=1e-9, atol=0)
  np.testing.assert_allclose(f32(vicreg_loss, a, b + 0.5, **kw), want[0], rtol=1e-5)
  np.testing.assert_allclose(f64(vicreg_loss, a, b), official_vicreg(a, b)[0], rtol=1e-9)


# ----------------------------------------------------------------------------- SwAV

def scores_like(rng, b, k):
  """Cosine-like prototype scores in [-1, 1] (unit-norm features and prototypes)."""
  f = np_normalize(rng.normal(size=(b, 16)))
  protos = np_normalize(rng.normal(size=(k, 16)))
  return f @ protos.T


@pytest.mark.parametrize("iterations", [1, 2, 3, 6])
def test_sinkhorn_matches_official(iterations):
  rng = np.random.default_rng(iterations)
  s = scores_like(rng, 48, 20)
  want = official_sinkhorn(s, 0.05, iterations)
  np.testing.assert_allclose(f64(sinkhorn, s, iterations=iterations), want, rtol=1e-9, atol=0)
  np.testing.assert_allclose(f32(sinkhorn, s, iterations=iterations), want, rtol=2e-5,
                             atol=1e-9)


def test_sinkhorn_marginals():
  rng = np.random.default_rng(11)
  b, k = 64, 16
  s = scores_like(rng, b, k)
  deviations = []
  for iterations in (1, 2, 3, 10, 300):
    q = f64(sinkhorn, s, epsilon=0.3, iterations=iterations)
    # Every iteration ends on the sample normalisation, odd or even count alike: rows exact.
    np.testing.assert_allclose(q.sum(1), 1.0, rtol=0, atol=1e-12)
    deviations.append(np.abs(q.sum(0) - b / k).max())
  # The prototype marginal is only approached: off after one pass, converging to B / K.
  assert deviations[0] > 1e-3
  assert deviations == sorted(deviations, reverse=True)
  assert deviations[-1] < 1e-9 * b / k
  q32 = f32(sinkhorn, s)
  np.testing.assert_allclose(q32.sum(1), 1.0, atol=2e-6)


def test_sinkhorn_max_shift_is_exact_and_overflow_safe():
  rng = np.random.default_rng(12)
  s = scores_like(rng, 32, 10)
  base = f64(sinkhorn, s)
  np.testing.assert_allclose(f64(sinkhorn, s + 30.0), base, rtol=1e-9, atol=1e-300)
  # In float32 the official exp(s / 0.05) overflows beyond s = 4.4; the shift keeps it finite.
  shifted = f32(sinkhorn, s + 30.0)
  assert np.all(np.isfinite(shifted))
  np.testing.assert_allclose(shifted, base, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("views,codes", [(2, 2), (6, 2), (3, 1)])
def test_swav_loss_matches_official(views, codes):
  rng = np.random.default_rng(views * 10 + codes)
  b, k = 24, 30
  outs = [scores_like(rng, b, k) for _ in range(views)]  # global views first, then locals
  qs = [official_sinkhorn(o) for o in outs[:codes]]
  want = official_swav(outs, qs, list(range(codes)))
  with jax.enable_x64(True):
    got = float(swav_loss([jnp.asarray(o) for o in outs], [jnp.asarray(q) for q in qs]))
  np.testing.assert_allclose(got, want, rtol=1e-9, atol=0)
  got32 = float(swav_loss([jnp.asarray(o, jnp.float32) for o in outs],
                          [jnp.asarray(q, jnp.float32) for q in qs]))
  np.testing.assert_allclose(got32, want, rtol=1e-5)


def test_swav_codes_are_constants_and_end_to_end():
  rng = np.random.default_rng(13)
  outs = [jnp.asarray(scores_like(rng, 16, 12), jnp.float32) for _ in range(4)]

  def loss(outs):
    codes = [jax.lax.stop_gradient(sinkhorn(o)) for o in outs[:2]]
    return swav_loss(outs, codes, temperature=0.1)

  want = official_swav([np.asarray(o, np.float64) for o in outs],
                       [official_sinkhorn(np.asarray(o, np.float64)) for o in outs[:2]], [0, 1])
  np.testing.assert_allclose(float(jax.jit(loss)(outs)), want, rtol=2e-5)
  codes = [sinkhorn(o) for o in outs[:2]]
  g = jax.grad(lambda c: swav_loss(outs, c))(codes)
  assert all(np.all(np.asarray(x) == 0) for x in g)
  g_scores = jax.grad(lambda o: swav_loss(o, codes))(outs)
  assert all(np.abs(np.asarray(x)).max() > 0 for x in g_scores)


# ----------------------------------------------------------------------------- InfoNCE

def test_infonce_hand_case():
  # Orthonormal samples, views identical: each anchor sees its positive at cosine 1 and its
  # 2N - 2 = 2 negatives at cosine 0, so the loss is log(1 + 2 exp(-1 / t)).
  e = np.eye(2)
  for t in (1.0, 0.5):
    want = math.log(1 + 2 * math.exp(-1 / t))
    np.testing.assert_allclose(f64(infonce_loss, e, 3.0 * e, temperature=t), want, rtol=1e-12)
  # Unequal cosines, each anchor's row written out (positive, then its two negatives):
  z1 = np.array([[1.0, 0.0], [0.0, 1.0]])
  z2 = np.array([[0.5, math.sqrt(3) / 2], [0.0, 1.0]])
  # anchor z1[0]: pos 0.5, negs z1[1]=0, z2[1]=0; anchor z2[0]: pos 0.5, negs z1[1]=√3/2, z2[1]=√3/2
  # anchor z1[1]: pos 1, negs z1[0]=0, z2[0]=√3/2;  anchor z2[1]: pos 1, negs z1[0]=0, z2[0]=√3/2
  c = math.sqrt(3) / 2

  def row(pos, negs):
    return -pos + math.log(math.exp(pos) + sum(math.exp(x) for x in negs))

  want = (row(0.5, [0, 0]) + row(0.5, [c, c]) + 2 * row(1.0, [0, c])) / 4
  np.testing.assert_allclose(f64(infonce_loss, z1, z2, temperature=1.0), want, rtol=1e-12)


@pytest.mark.parametrize("t", [0.1, 0.5])
def test_infonce_is_half_the_official_sum_of_view_means(t):
  rng = np.random.default_rng(int(t * 10))
  a, b = pair(rng, 24, 16)
  want = official_simclr(a, b, t) / 2
  np.testing.assert_allclose(f64(infonce_loss, a, b, temperature=t), want, rtol=1e-9, atol=0)
  np.testing.assert_allclose(f32(infonce_loss, a, b, temperature=t), want, rtol=1e-5)


# ----------------------------------------------------------------------------- sharding, dtypes

def test_sharded_equals_single_device():
  rng = np.random.default_rng(21)
  a, b = pair(rng, 32, 4 * 8, scale=2.0)

  def music(x, y):
    return music_loss(x, y, segment_size=8)

  got, want = sharded_and_single(music, a, b)
  np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
  np.testing.assert_allclose(float(got), official_music(a, b, 8)[0], rtol=1e-5)
  g_sharded, g_single = sharded_and_single(jax.grad(music), a, b)
  g_single = np.asarray(g_single)
  np.testing.assert_allclose(np.asarray(g_sharded), g_single, rtol=1e-5,
                             atol=1e-5 * np.abs(g_single).max())

  s = scores_like(rng, 64, 12)
  got, want = sharded_and_single(sinkhorn, s)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-9)
  np.testing.assert_allclose(np.asarray(got), official_sinkhorn(s), rtol=2e-5, atol=1e-9)

  def nce(x, y):
    return infonce_loss(x, y, temperature=0.2)

  got, want = sharded_and_single(nce, a, b)
  np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
  np.testing.assert_allclose(float(got), official_simclr(a, b, 0.2) / 2, rtol=1e-5)


def test_bfloat16_inputs_reduce_in_float32():
  rng = np.random.default_rng(22)
  a, b = (jnp.asarray(x, jnp.bfloat16) for x in pair(rng, 16, 16))
  outs = [music_loss(a, b, segment_size=4), simsiam_loss(a, b), byol_loss(a, b),
          barlow_twins_loss(a, b), vicreg_loss(a, b), infonce_loss(a, b, temperature=0.1),
          swav_loss([a, b], [sinkhorn(a)]), sinkhorn(a)]
  assert all(o.dtype == jnp.float32 for o in outs)
