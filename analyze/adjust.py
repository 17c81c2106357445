"""GLA and its baselines as plain functions over logit arrays.

zs_debiased = zs − log π_p; ft_la = ft − log π_s (logit adjustment); ensemble = zs + ft;
gla = zs + ft − log π_s − log π_p. Each de-biased method targets a balanced label
distribution; for a known target prior π_t, ``target_prior`` adds + log π_t to zs_debiased,
ft_la and gla. Outputs are float32 (float64 in, float64 out); the input is never modified.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

METHODS = ("zs", "zs_debiased", "ft", "ft_la", "ensemble", "gla")
ZS_METHODS = ("zs", "zs_debiased")


def _logits(x, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{what} logits must be 2-D (N, C), got shape {x.shape}")
    return x if x.dtype in (np.float32, np.float64) else x.astype(np.float32)


def log_prior(prior, num_classes: int, what: str, dtype=np.float32) -> np.ndarray:
    """log of a positive (C,) prior, as a row vector in the logits' dtype."""
    p = np.asarray(prior, dtype=np.float64)
    if p.shape != (num_classes,) or not np.isfinite(p).all() or (p <= 0).any():
        raise ValueError(f"{what} must be a positive finite ({num_classes},) vector")
    return np.log(p / p.sum()).astype(dtype)


def _target(target_prior, C, dtype):
    return 0.0 if target_prior is None else log_prior(target_prior, C, "target_prior", dtype)


def zs(zs):
    return _logits(zs, "zs")


def zs_debiased(zs, pi_p, target_prior=None):
    z = _logits(zs, "zs")
    C = z.shape[1]
    return z - (log_prior(pi_p, C, "pi_p", z.dtype) - _target(target_prior, C, z.dtype))


def ft(ft):
    return _logits(ft, "ft")


def ft_la(ft, pi_s, target_prior=None):
    f = _logits(ft, "ft")
    C = f.shape[1]
    return f - (log_prior(pi_s, C, "pi_s", f.dtype) - _target(target_prior, C, f.dtype))


def ensemble(zs, ft):
    z, f = _logits(zs, "zs"), _logits(ft, "ft")
    _same_shape(z, f)
    return z + f


def gla(zs, ft, pi_s, pi_p, target_prior=None):
    z, f = _logits(zs, "zs"), _logits(ft, "ft")
    _same_shape(z, f)
    C = z.shape[1]
    bias = log_prior(pi_s, C, "pi_s", np.float64) + log_prior(pi_p, C, "pi_p", np.float64)
    out = z + f
    out -= (bias - _target(target_prior, C, np.float64)).astype(out.dtype)
    return out


def _same_shape(z, f):
    if z.shape != f.shape:
        raise ValueError(f"zs and ft logits differ in shape: {z.shape} vs {f.shape}")


def methods_for(has_ft: bool, methods=None) -> tuple[str, ...]:
    """The methods to run: all six with ft logits, ZS_METHODS without; validates names."""
    if methods is None:
        return METHODS if has_ft else ZS_METHODS
    methods = tuple(methods)
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
        if not has_ft and m not in ZS_METHODS:
            raise ValueError(f"method {m!r} needs fine-tuned (ft) logits")
    return methods


# method -> f(zs, ft, pi_s, pi_p, target_prior)
_DISPATCH = {
    "zs": lambda a, f, ps, pp, t: zs(a),
    "zs_debiased": lambda a, f, ps, pp, t: zs_debiased(a, pp, t),
    "ft": lambda a, f, ps, pp, t: ft(f),
    "ft_la": lambda a, f, ps, pp, t: ft_la(f, ps, t),
    "ensemble": lambda a, f, ps, pp, t: ensemble(a, f),
    "gla": lambda a, f, ps, pp, t: gla(a, f, ps, pp, t),
}


def iter_methods(zs, ft=None, *, pi_s, pi_p, target_prior=None, methods=None) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (method, logits) one at a time, so a caller holds one adjusted copy at once."""
    for m in methods_for(ft is not None, methods):
        yield m, _DISPATCH[m](zs, ft, pi_s, pi_p, target_prior)


def apply_methods(zs, ft=None, *, pi_s, pi_p, target_prior=None, methods=None) -> dict[str, np.ndarray]:
    """{method: adjusted logits} for every method (ZS_METHODS only when ft is None)."""
    return dict(iter_methods(zs, ft, pi_s=pi_s, pi_p=pi_p, target_prior=target_prior, methods=methods))
