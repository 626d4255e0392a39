"""`bounds()`: the auto_LiRPA-style entry point for bounds of a model over boxes."""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Optional

import numpy as np
import torch

from relaxations import BoundOptions, IntervalBounds, compute_bounds
from verifier.config import BoundsConfig, resolve_device
from verifier.config_checks import options_or_default
from verifier.model import Model

__all__ = ["bounds", "dtype_of", "bound_options", "region_options", "outward_box", "ShapeError"]


def dtype_of(name: str) -> torch.dtype:
    if name not in ("float32", "float64"):
        raise ValueError(f"dtype must be float32 or float64, not '{name}'")
    return torch.float32 if name == "float32" else torch.float64


def bound_options(cfg, method: Optional[str] = None) -> BoundOptions:
    """BoundOptions from the verifier's BoundsConfig.

    `optimise_intermediate` is left off here: it is for the bound on the whole input
    region (`region_options` sets it), while the searches take their options from here
    and bound many domains, where it costs too much per domain.
    """
    return BoundOptions(method=method or cfg.method, intermediate=cfg.intermediate,
                        alpha_iterations=cfg.alpha_iterations, alpha_lr=cfg.alpha_lr,
                        max_elements=cfg.max_elements, patches=cfg.patches, sparse_alpha=cfg.sparse_alpha,
                        sdp_crown=cfg.sdp_crown)


def region_options(cfg: BoundsConfig, method: str, deadline: Optional[float], optimise: bool = True) -> BoundOptions:
    """BoundOptions for one bound over a whole input region (`verify`'s root bound,
    `bounds()`): `bound_options` with the deadline, and alpha-CROWN's intermediate bounds
    optimised as `cfg.optimise_intermediate` says, in `cfg.optimise_share` of the time
    left before `deadline` (no deadline: no limit). `optimise=False` leaves them plain
    whatever the config says (a certificate's writer re-derives them by plain CROWN).
    `method` stands in for the config's (which may be an SDP method, which bound
    propagation has no options for); BoundOptions refuses an unknown one.
    """
    now = time.monotonic()
    return replace(bound_options(cfg, "crown"), method=method, deadline=deadline,
                   optimise_intermediate=cfg.optimise_intermediate and optimise,
                   optimise_deadline=None if deadline is None else now + cfg.optimise_share * max(0.0, deadline - now))


def outward_box(lower, upper, dtype: torch.dtype, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The box as tensors of `dtype` on `device` (auto: cuda when available, else cpu),
    rounded outward so it contains the float64 box.

    Round-to-nearest could move a face inward by half an ulp and leave a sliver of the
    region unexamined; rounding down the lower and up the upper faces cannot.
    """
    device = resolve_device(device)
    lo64 = np.asarray(lower, dtype=np.float64)
    hi64 = np.asarray(upper, dtype=np.float64)
    if dtype == torch.float64:
        return (torch.tensor(lo64, dtype=dtype, device=device), torch.tensor(hi64, dtype=dtype, device=device))
    lo = lo64.astype(np.float32)
    hi = hi64.astype(np.float32)
    lo = np.where(lo.astype(np.float64) > lo64, np.nextafter(lo, np.float32(-np.inf)), lo)
    hi = np.where(hi.astype(np.float64) < hi64, np.nextafter(hi, np.float32(np.inf)), hi)
    return torch.tensor(lo, dtype=dtype, device=device), torch.tensor(hi, dtype=dtype, device=device)


class ShapeError(ValueError):
    """An input box or specification matrix whose shape does not fit the model."""


def _check_box_shape(name: str, value, shape: tuple[int, ...]) -> None:
    """Accept the model's input shape, its flat size, or either with a leading batch dimension."""
    got = tuple(np.shape(value))
    n = int(np.prod(shape))
    ok = got in (tuple(shape), (n,)) or (len(got) >= 1 and got[1:] in (tuple(shape), (n,)))
    if not ok:
        raise ShapeError(f"{name} has shape {got}; expected the model's input shape {tuple(shape)} "
                         f"(or {n} values), optionally with a leading batch dimension")


def bounds(model: Model | torch.nn.Module, lower, upper, method: str = "crown", C=None, *, device: str = "auto",
           deadline: Optional[float] = None, config: Optional[BoundsConfig] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sound lower and upper bounds of `C @ output` (or of the outputs) over a box.

    lower/upper: arrays of the model's input shape, or with a leading batch dimension
    for many boxes at once. C: [S, n_out] or [B, S, n_out]. Returns two tensors [B, S]
    (or [S] when the box had no batch dimension), on the device the bounds were computed
    on: `device` auto is cuda when torch sees a CUDA device, else cpu (call `.cpu()`
    before `.numpy()`). Nothing is kept between calls.
    `model` may also be a torch module (auto_LiRPA's use, without files): lower/upper are
    then a batch [B, *input] as the module takes it, and the result is [B, S]. The module
    (in eval mode) is exported to ONNX in memory at each call and bounded as the exported
    graph, which onnxruntime checks on load; for many calls on one module,
    `verifier.module_model(module, (1, *input))` once and pass the Model.
    A wrong shape raises ShapeError naming what was expected; past `deadline`
    (time.monotonic()) the bound passes raise relaxations.DeadlineExceeded.

    `config` is the verifier's bounds section (`verifier.config.BoundsConfig`, or
    `cfg.bounds` of a loaded `Config`), so the knobs a YAML file sets (dtype,
    alpha_iterations, alpha_lr, patches, intermediate, sparse_alpha, optimise_intermediate,
    optimise_share, ...) reach this call the same way, and its bound over the box is the
    one `verify` takes at the root; None is `BoundsConfig()`. Its `method` is not read:
    that is the verifier's strongest method to escalate to, while this call computes
    `method`. `optimise_intermediate` (on by default) makes alpha-crown optimise the
    intermediate bounds too, as `verify` does: tighter, and slower; `False` gives plain
    alpha-CROWN. `optimise_share` of the time left before `deadline` may go to that.
    `patches=False` walks convolutions with whole feature maps (the same bounds, slower;
    benchmarks).
    """
    config = options_or_default("config", config, BoundsConfig, "verifier.config.BoundsConfig, e.g. Config().bounds")
    if isinstance(model, torch.nn.Module):
        model, lower, upper = _module_box(model, lower, upper)
    elif not isinstance(model, Model):
        raise TypeError(f"model must be a verifier.Model (verifier.load_model) or a torch module, not "
                        f"{type(model).__name__}")
    dt = dtype_of(config.dtype)
    device = resolve_device(device)
    shape = model.graph.input_shape
    _check_box_shape("lower", lower, shape)
    _check_box_shape("upper", upper, shape)
    if np.shape(lower) != np.shape(upper):
        raise ShapeError(f"lower and upper must have the same shape, got {np.shape(lower)} and {np.shape(upper)}")
    lo, hi = outward_box(lower, upper, dt, device)
    single = lo.numel() == int(np.prod(shape)) and lo.dim() <= len(shape)
    lo = lo.reshape(-1, *shape)
    hi = hi.reshape(-1, *shape)
    if bool((lo > hi).any()):
        raise ValueError("empty box: some lower bound exceeds its upper bound")
    if C is not None:
        C = torch.as_tensor(np.asarray(C, dtype=np.float64), dtype=dt, device=device)
        if C.shape[-1] != model.n_outputs or C.dim() not in (2, 3):
            raise ShapeError(f"C has shape {tuple(C.shape)}; expected [S, {model.n_outputs}] or "
                             f"[B, S, {model.n_outputs}] (the model has {model.n_outputs} outputs)")
    opts = region_options(config, method, deadline)   # the config's options, this call's method
    res = compute_bounds(model.graph, IntervalBounds(lo, hi), C=C, options=opts)
    lower_b, upper_b = res.lower.detach(), res.upper.detach()
    return (lower_b[0], upper_b[0]) if single else (lower_b, upper_b)


def _module_box(module: torch.nn.Module, lower, upper) -> tuple[Model, object, object]:
    """A torch module's `Model` and its box as `bounds` reads a batch of boxes: lower/upper
    [B, *input] become [B, 1, *input] (the exported graph's input has batch 1), so that
    even B = 1 gives [B, S]."""
    # lazy: import cycle (verifier.pytorch.verify_module imports this module)
    from verifier.pytorch.verify_module import module_model

    shape = tuple(np.shape(lower))
    if len(shape) < 2:
        raise ShapeError(f"a torch module takes a batch: lower and upper must be [B, *input_shape], got {shape}")
    if tuple(np.shape(upper)) != shape:
        raise ShapeError(f"lower and upper must have the same shape, got {shape} and {tuple(np.shape(upper))}")
    model = module_model(module, (1, *shape[1:]))
    batched = (shape[0], 1, *shape[1:])

    def reshape(a):
        return a.detach().reshape(batched) if isinstance(a, torch.Tensor) else np.reshape(np.asarray(a), batched)

    return model, reshape(lower), reshape(upper)
