"""Names, colours and marker shapes the report uses for methods and estimators."""

from __future__ import annotations

from gla.analyze.adjust import METHODS

# The methods in the order every table and plot shows them: adjust's registry first,
# then the variants it does not list (gla_tp, wiseft@α), by name.
METHOD_ORDER: tuple[str, ...] = tuple(METHODS)

METHOD_LABEL = {
    "zs": "zero-shot",
    "zs_debiased": "zero-shot − log π̂p",
    "ft": "fine-tuned",
    "ft_la": "fine-tuned − log πs (LA)",
    "ensemble": "zs + ft",
    "gla": "GLA",
}
METHOD_COLOR = {
    "zs": "#8c8c8c",
    "zs_debiased": "#4c72b0",
    "ft": "#dd8452",
    "ft_la": "#937860",
    "ensemble": "#8172b3",
    "gla": "#c44e52",
}
# Estimators (and the methods of the per-class plot) are drawn hollow, each with its own
# shape and a size that shrinks down the list, so series with the same values show as
# concentric marks instead of hiding each other.
ESTIMATOR_MARKERS = ("o", "s", "D", "^", "v", "P", "X", "*")
ESTIMATOR_COLORS = ("#c44e52", "#4c72b0", "#55a868", "#8172b3", "#dd8452", "#937860", "#da8bc3", "#8c8c8c")


def hollow(k: int, color: str | None, dashed: bool = False, points: int = 0) -> dict:
    """Scatter keywords for the k-th series of marks that may coincide: hollow, its own
    shape, and a size that shrinks with k, so equal points show as concentric marks.
    With many ``points`` per series (classes) every size shrinks too, down to a quarter."""
    crowd = min(1.0, max(0.25, (60 / points) ** 0.5)) if points else 1.0
    return {"marker": ESTIMATOR_MARKERS[k % len(ESTIMATOR_MARKERS)], "s": 80.0 * 0.72 ** k * crowd,
            "facecolors": "none", "edgecolors": color, "linewidths": 0.8 if dashed else 1.1,
            "linestyles": "--" if dashed else "-"}


FONT = {"title": 10, "label": 9, "tick": 8, "legend": 8, "note": 8}


def label(method: str) -> str:
    return METHOD_LABEL.get(method, method)


# Methods beyond adjust's registry get colours of their own too (matplotlib's default
# cycle would repeat the blue and orange of zs_debiased and ft).
VARIANT_COLOR = {"gla_tp": "#da8bc3", "wiseft@": "#55a868", "kshot@": "#64b5cd"}
OTHER_COLOR = "#4d4d4d"


def color(method: str) -> str:
    if method in METHOD_COLOR:
        return METHOD_COLOR[method]
    return next((c for prefix, c in VARIANT_COLOR.items() if method.startswith(prefix)), OTHER_COLOR)


def ordered_methods(present) -> list[str]:
    present = set(present)
    return [m for m in METHOD_ORDER if m in present] + sorted(present - set(METHOD_ORDER))
