"""Batched, seeded image augmentation as one affine warp per image (+ optional random erasing),
and mixup over a batch.

Semantics follow Keras' ImageDataGenerator where the thesis used it: ``shear_deg`` is an
angle in degrees (the thesis's ``shear_range=0.2`` is therefore 0.2 degrees), ``zoom`` draws
x and y scale independently from [1 - zoom, 1 + zoom], borders are filled with the nearest pixel.
"""
from __future__ import annotations

import math

import tensorflow as tf

KNOWN = {"flip", "shear_deg", "zoom", "rotation_deg", "shift", "erasing"}


def check_config(cfg: dict) -> dict:
    unknown = set(cfg) - KNOWN
    if unknown:
        raise ValueError(f"unknown augmentation keys {sorted(unknown)} (known: {sorted(KNOWN)})")
    return cfg


def _stream(seed, k):
    """The stateless seed of draw k from a batch's seed: every random quantity has its own key."""
    return tf.stack([seed, tf.constant(k, tf.int64)])


def _uniform(seed, n, lo, hi, k):
    return tf.random.stateless_uniform([n], seed=_stream(seed, k), minval=lo, maxval=hi)


def augment_batch(images: tf.Tensor, seed: tf.Tensor, cfg: dict) -> tf.Tensor:
    """images: float32 (B, H, W, 1); seed: int64 scalar. Same seed -> same output."""
    b = tf.shape(images)[0]
    h = tf.cast(tf.shape(images)[1], tf.float32)
    w = tf.cast(tf.shape(images)[2], tf.float32)
    rot = math.radians(cfg.get("rotation_deg", 0.0))
    shear = math.radians(cfg.get("shear_deg", 0.0))
    zoom = cfg.get("zoom", 0.0)
    shift = cfg.get("shift", 0.0)
    a = _uniform(seed, b, -rot, rot, 1) if rot else tf.zeros([b])
    s = _uniform(seed, b, -shear, shear, 2) if shear else tf.zeros([b])
    zx = _uniform(seed, b, 1 - zoom, 1 + zoom, 3) if zoom else tf.ones([b])
    zy = _uniform(seed, b, 1 - zoom, 1 + zoom, 4) if zoom else tf.ones([b])
    tx = _uniform(seed, b, -shift, shift, 5) * w if shift else tf.zeros([b])
    ty = _uniform(seed, b, -shift, shift, 6) * h if shift else tf.zeros([b])
    f = tf.where(_uniform(seed, b, 0.0, 1.0, 7) < 0.5, -1.0, 1.0) if cfg.get("flip") else tf.ones([b])
    # M = Rotation @ Shear @ Zoom @ Flip maps output coordinates (about the centre) to input ones.
    ca, sa = tf.cos(a), tf.sin(a)
    m00 = ca * zx * f
    m01 = (ca * -tf.sin(s) - sa * tf.cos(s)) * zy
    m10 = sa * zx * f
    m11 = (sa * -tf.sin(s) + ca * tf.cos(s)) * zy
    cx, cy = (w - 1) / 2, (h - 1) / 2
    a2 = cx - m00 * cx - m01 * cy + tx
    b2 = cy - m10 * cx - m11 * cy + ty
    zeros = tf.zeros([b])
    transforms = tf.stack([m00, m01, a2, m10, m11, b2, zeros, zeros], axis=1)
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=tf.shape(images)[1:3],
        interpolation="BILINEAR", fill_mode="NEAREST", fill_value=0.0)
    p = cfg.get("erasing", 0.0)
    if p:
        out = _random_erase(out, seed, p)
    return out


def _random_erase(images, seed, p, area=(0.02, 0.2), aspect=(0.3, 3.3)):
    """Random erasing (Zhong et al. 2017): a rectangle per image, filled with the image mean."""
    b = tf.shape(images)[0]
    h = tf.cast(tf.shape(images)[1], tf.float32)
    w = tf.cast(tf.shape(images)[2], tf.float32)
    frac = _uniform(seed, b, area[0], area[1], 11)
    ratio = tf.exp(_uniform(seed, b, math.log(aspect[0]), math.log(aspect[1]), 12))
    eh = tf.minimum(tf.sqrt(frac * h * w * ratio), h)
    ew = tf.minimum(tf.sqrt(frac * h * w / ratio), w)
    y0 = _uniform(seed, b, 0.0, 1.0, 13) * (h - eh)
    x0 = _uniform(seed, b, 0.0, 1.0, 14) * (w - ew)
    on = tf.cast(_uniform(seed, b, 0.0, 1.0, 15) < p, tf.float32)
    ys = tf.range(h)[None, :, None]
    xs = tf.range(w)[None, None, :]
    inside = ((ys >= y0[:, None, None]) & (ys < (y0 + eh)[:, None, None])
              & (xs >= x0[:, None, None]) & (xs < (x0 + ew)[:, None, None]))
    mask = tf.cast(inside, tf.float32) * on[:, None, None]
    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    mask = mask[..., None]
    return images * (1 - mask) + mean * mask


def mixup_lambda(seed: tf.Tensor, n, alpha: float) -> tf.Tensor:
    """n weights from Beta(alpha, alpha), folded into [0.5, 1] so each sample keeps its own label
    as the larger share (as fastai does)."""
    g1 = tf.random.stateless_gamma([n], seed=_stream(seed, 21), alpha=alpha)
    g2 = tf.random.stateless_gamma([n], seed=_stream(seed, 22), alpha=alpha)
    total = g1 + g2
    lam = tf.where(total > 0, g1 / tf.maximum(total, 1e-30), 1.0)  # both gammas can underflow at small alpha
    return tf.maximum(lam, 1.0 - lam)


def mixup_batch(images, labels, weights, seed: tf.Tensor, alpha: float):
    """mixup (Zhang et al. 2018): sample i is blended with sample B-1-i of the same (shuffled) batch;
    images, one-hot labels and loss weights are mixed with the same per-sample weight."""
    lam = mixup_lambda(seed, tf.shape(images)[0], alpha)

    def mix(t):
        w = tf.reshape(lam, [-1] + [1] * (len(t.shape) - 1))
        return w * t + (1.0 - w) * tf.reverse(t, [0])

    return mix(images), mix(labels), mix(weights)
