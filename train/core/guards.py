"""Guards against non-finite numbers: checkpoints with NaN/inf weights and training that diverges.

A NaN weight trains silently: every loss and gradient after it is NaN, the optimizer writes NaN into every weight,
and the run still exits 0 and saves the result. These guards make each case an error naming the tensor:

* :func:`first_nonfinite`: the first tensor with NaN/inf values (``train.core.loading.load_model`` checks every
  checkpoint it loads with it);
* :class:`FiniteTrainingGuard`: a ``TrainerCallback`` that stops training before an optimizer step with a
  non-finite gradient (what a NaN or inf loss gives) and before a checkpoint of non-finite weights is saved;
* :func:`check_finite_model`: the same check before the final model is saved.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

import torch
from transformers import TrainerCallback

logger = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """A weight, gradient or loss that is NaN or infinite; the message names the tensor (and the file or step)."""


def _local(t: torch.Tensor) -> torch.Tensor:
    # FSDP2 parameters are DTensors: each process checks its own shard, and the flag is then shared (_any_process).
    return t.to_local() if hasattr(t, "to_local") else t


def _finite(t: torch.Tensor) -> torch.Tensor:
    # min and max propagate NaN and show inf: two reductions with no tensor-sized temporary, ~12x faster on a CPU
    # than isfinite(t).all() (0.5 s against 7 s per GiB of float32 on 2 cores).
    try:
        return torch.stack(torch.aminmax(t.detach())).isfinite().all()
    except (RuntimeError, NotImplementedError):  # a dtype without aminmax
        return torch.isfinite(t).all()


def first_nonfinite(named: Iterable[tuple[str, torch.Tensor | None]]) -> tuple[str, int] | None:
    """``(name, count)`` of the first tensor with NaN/inf values, skipping missing and meta tensors; else None."""
    named = [(n, _local(t)) for n, t in named if t is not None and not t.is_meta and t.is_floating_point()]
    named = [(n, t) for n, t in named if t.numel()]
    if not named:
        return None
    # One flag per tensor, read back once: a host sync per tensor would dominate on an accelerator.
    flags = [_finite(t) for _, t in named]
    ok = torch.stack([f.to(flags[0].device) for f in flags]).cpu()
    if bool(ok.all()):
        return None
    name, t = named[int((~ok).nonzero()[0])]
    return name, int((~torch.isfinite(t)).sum())


def _any_process(flag: bool, device: torch.device | None = None) -> bool:
    """Whether ``flag`` is set on any process, so that every rank raises together instead of the others hanging."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    backend = torch.distributed.get_backend()
    device = torch.device("cpu") if backend == "gloo" or device is None else device
    t = torch.tensor([float(flag)], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())


def check_finite_model(model: torch.nn.Module, where: str) -> None:
    """Before saving: raise on every process when any process holds a non-finite parameter."""
    bad = first_nonfinite(model.named_parameters())
    device = next(model.parameters()).device if any(True for _ in model.parameters()) else None
    if _any_process(bad is not None, device):
        what = f"parameter {bad[0]!r} has {bad[1]} NaN/inf value(s)" if bad else "another process has NaN/inf weights"
        raise NonFiniteError(f"{where}: {what}; refusing to save a model with non-finite weights")


def _is_bad(value: Any) -> bool:
    return isinstance(value, (int, float)) and not math.isfinite(value)


class FiniteTrainingGuard(TrainerCallback):
    """Stop training with :class:`NonFiniteError` as soon as the loss or a gradient is NaN or infinite.

    The gradients are checked before every optimizer step (a NaN loss gives NaN gradients, and one step with them
    makes every weight NaN), the weights before every checkpoint, and the logged loss and gradient norm at every
    log. The check costs one reduction per parameter per step and one host sync.
    """

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if model is None:
            return
        bad = first_nonfinite((n, p.grad) for n, p in model.named_parameters() if p.requires_grad)
        device = next(model.parameters()).device
        if _any_process(bad is not None, device):
            what = f"the gradient of {bad[0]!r} has {bad[1]} NaN/inf value(s)" if bad else "another process's gradient"
            raise NonFiniteError(
                f"step {state.global_step + 1}: {what}: the loss or gradient norm is not finite (a corrupt batch, "
                "a learning rate too high, or an overflow in half precision); training stopped before the optimizer "
                "step, nothing more is saved"
            )

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        # Runs after transformers' flow callback has decided whether this step saves a checkpoint.
        if model is not None and control.should_save:
            check_finite_model(model, f"step {state.global_step}: checkpoint")

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        bad = {k: v for k, v in (logs or {}).items() if k in ("loss", "grad_norm") and _is_bad(v)}
        if bad:
            raise NonFiniteError(f"step {state.global_step}: {bad} is not finite; training stopped")
