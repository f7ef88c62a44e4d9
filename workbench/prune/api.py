"""`prune_(model, spec)`: one entry point for every pruning method, named by a short spec.

A spec is METHOD:SPARSITY (a fraction in [0, 1) of each matrix removed) or METHOD:N:M (N weights kept
in every M consecutive inputs), e.g. `magnitude:0.5`, `wanda:2:4`, `sparsegpt:0.5`; structured
methods take the fraction of MLP channels or attention head groups removed: `mlp:0.3`, `heads:0.25`.
`workbench prune list` prints them; `--prune SPEC` applies one before any `--quant`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..corpus import calibration_token_ids
from ..errors import PruningError
from .magnitude import magnitude_prune_
from .masks import check_nm, check_sparsity
from .sparsegpt import sparsegpt_prune_
from .structured import prune_heads, prune_mlp
from .wanda import CALIBRATION_TOKENS, wanda_prune_

# method -> (takes N:M, needs calibration text, one-line description)
SPECS = {
    "magnitude": (True, False, "smallest |w| of each matrix (per-layer threshold; the data-free baseline)"),
    "magnitude-global": (False, False, "smallest |w| over all decoder matrices together (one threshold)"),
    "wanda": (True, True, "smallest |w| x input-channel norm within each output row (calibrated, no update)"),
    "sparsegpt": (True, True, "OBS saliency with Hessian-based update of the kept weights (calibrated)"),
    "mlp": (False, None, "structured: remove MLP channels (matrices shrink; activation criterion)"),
    "heads": (False, None, "structured: remove whole KV head groups with their query heads"),
}
EXAMPLES = ("magnitude:0.5", "magnitude-global:0.5", "wanda:0.5", "wanda:2:4", "sparsegpt:0.5", "sparsegpt:4:8",
            "mlp:0.3", "heads:0.25")
STRUCTURED = ("mlp", "heads")


@dataclass(frozen=True)
class PruneSpec:
    method: str
    sparsity: float | None = None      # unstructured / structured fraction
    nm: tuple[int, int] | None = None  # semi-structured N:M

    @property
    def pattern(self) -> str:
        if self.method in STRUCTURED:
            return f"structured-{self.method}"
        return f"{self.nm[0]}:{self.nm[1]}" if self.nm else "unstructured"

    @property
    def target_sparsity(self) -> float:
        """Fraction of each pruned matrix removed (N:M: 1 - N/M)."""
        return 1 - self.nm[0] / self.nm[1] if self.nm else self.sparsity

    def __str__(self):
        return f"{self.method}:{self.nm[0]}:{self.nm[1]}" if self.nm else f"{self.method}:{self.sparsity:g}"


def parse_spec(spec) -> PruneSpec:
    """'wanda:0.5' -> PruneSpec('wanda', 0.5); 'wanda:2:4' -> PruneSpec('wanda', nm=(2, 4))."""
    if isinstance(spec, PruneSpec):
        return spec
    accepted = f"accepted: METHOD:SPARSITY or METHOD:N:M with METHOD one of {', '.join(SPECS)}; e.g. {', '.join(EXAMPLES)}"
    parts = str(spec).strip().split(":")
    if parts[0] not in SPECS:
        raise PruningError(f"unknown pruning method {parts[0]!r} in {spec!r} ({accepted})")
    method, (takes_nm, _, _) = parts[0], SPECS[parts[0]]
    try:
        if len(parts) == 2:
            return PruneSpec(method, check_sparsity(float(parts[1]), f"sparsity in {spec!r}"))
        if len(parts) == 3 and takes_nm:
            return PruneSpec(method, nm=check_nm(int(parts[1]), int(parts[2])))
    except ValueError as e:
        if isinstance(e, PruningError):
            raise
        raise PruningError(f"cannot read the numbers of pruning spec {spec!r} ({accepted})") from None
    raise PruningError(f"malformed pruning spec {spec!r} ({accepted}"
                       f"{'' if takes_nm else f'; {method} takes no N:M pattern'})")


def prune_(model, spec, *, tokenizer=None, calibration_text=None, calib=None, layers=None, **options):
    """Prune `model` in place by `spec` (a string such as 'wanda:0.5' or a `PruneSpec`); returns the model.

    Calibrated methods (wanda, sparsegpt; mlp/heads choose by activations when a tokenizer is given)
    read `calibration_text` (default: the built-in calibration part) through `tokenizer`, or the
    calibration set `calib` names (`workbench.corpus.calibration`, e.g. "licenses:2048" or
    "generated:2048"; uncounted parts share the method's `calibration_tokens`). `layers`
    (names or glob patterns of decoder matrices, e.g. '*.mlp.*') limits unstructured and N:M pruning;
    structured pruning is uniform over layers, so the model keeps one config. `options` go to the
    method's function (e.g. scope, calibration_tokens, damp, multiple_of).
    """
    spec = parse_spec(spec)
    calibrated = SPECS[spec.method][1]
    if calibrated and tokenizer is None:
        raise PruningError(f"{spec.method} needs calibration text: pass prune_(model, {str(spec)!r}, tokenizer=tok)")
    if calib is not None and calibrated is not False and tokenizer is not None:
        if calibration_text is not None:
            raise PruningError("pass calibration_text or calib, not both")
        calibration_text = calibration_token_ids(calib, tokenizer, model=model,
                                                 default_tokens=options.get("calibration_tokens", CALIBRATION_TOKENS))
        options["calibration_tokens"] = len(calibration_text)
    if spec.method in STRUCTURED:
        if layers is not None:
            raise PruningError(f"{spec.method} pruning is uniform over layers (one model config); `layers` "
                               "applies to unstructured and N:M methods only")
        prune = prune_mlp if spec.method == "mlp" else prune_heads
        return prune(model, spec.sparsity, tokenizer=tokenizer, calibration_text=calibration_text, **options)
    if spec.method.startswith("magnitude"):
        scope = "global" if spec.method == "magnitude-global" else options.pop("scope", "layer")
        return magnitude_prune_(model, spec.sparsity, scope=scope, nm=spec.nm, layers=layers, **options)
    prune = wanda_prune_ if spec.method == "wanda" else sparsegpt_prune_
    return prune(model, tokenizer, spec.sparsity, nm=spec.nm, layers=layers, calibration_text=calibration_text,
                 **options)
