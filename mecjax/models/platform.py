"""One kernel per lowering platform, differentiable: what ``config.model.kernels`` selects.

``dispatch(kernels, cpu, plain, *args)`` computes ``cpu(*args)`` ("cpu"), ``plain(*args)``
("xla"), or ("auto") whichever of the two belongs to the platform the computation is
lowered for: ``cpu`` on XLA:CPU, ``plain`` on every other platform. "auto" is decided at
lowering, not by the machine running Python (``jax.lax.platform_dependent``), so a step
exported for cuda or tpu from a CPU host holds the plain kernels only, forward and gradient.

Why a custom VJP around the choice rather than ``platform_dependent`` under autodiff:
autodiff of a ``platform_dependent`` linearises and transposes a conditional per call,
which made tracing a whole ResNet train step about 2.5x as slow as tracing either kernel
alone (one choice per convolution and per BatchNorm). Here the forward is one choice and
the backward another, each branch being ``jax.vjp`` of its own kernel (so the "cpu" branch
keeps the CPU kernels' custom gradients and the plain branch is plain autodiff); the
residuals are the inputs, from which each backward recomputes only what its VJP needs.
"""

from __future__ import annotations

from typing import Callable

import jax

KERNELS = ("auto", "cpu", "xla")


def check_kernels(kernels: str) -> str:
  if kernels not in KERNELS:
    raise ValueError(f"kernels={kernels!r}: expected one of {KERNELS}")
  return kernels


def dispatch(kernels: str, cpu: Callable, plain: Callable, *args):
  """``cpu(*args)`` or ``plain(*args)`` as ``kernels`` says ("auto": per lowering platform).

  Args:
    kernels: "auto" | "cpu" | "xla".
    cpu, plain: functions of the same signature and output types (arrays only).
    *args: their array arguments.
  Returns:
    The chosen function's output; under "auto" its gradient is the chosen function's too.
  """
  if check_kernels(kernels) == "cpu":
    return cpu(*args)
  if kernels == "xla":
    return plain(*args)
  return _per_platform(cpu, plain)(*args)


def _per_platform(cpu: Callable, plain: Callable) -> Callable:

  @jax.custom_vjp
  def f(*args):
    return jax.lax.platform_dependent(*args, cpu=cpu, default=plain)

  def fwd(*args):
    return f(*args), args

  def bwd(args, g):
    def vjp(fn):
      return lambda g, *a: jax.vjp(fn, *a)[1](g)
    return jax.lax.platform_dependent(g, *args, cpu=vjp(cpu), default=vjp(plain))

  f.defvjp(fwd, bwd)
  return f
