"""t5x's token cross entropy (with z-loss) as per-batch sums, so microbatches add up exactly.

Normalisation (`loss_normalizing_factor`):
  * "NUM_REAL_TARGET_TOKENS" (default here): mean over the real target tokens of the whole batch
    (t5x's `SpecialLossNormalizingFactor.NUM_REAL_TARGET_TOKENS`);
  * None: t5x's default, the plain sum over target tokens of the batch;
  * a number: the sum divided by it (t5x's "1024 * 229" habit for MeshTF checkpoints).
Adafactor and Adam are invariant to a constant gradient scale, so with them the choice only changes
the logged loss; it matters for SGD.
"""
from typing import Mapping, Optional, Union

import jax
import jax.numpy as jnp

NUM_REAL_TARGET_TOKENS = "NUM_REAL_TARGET_TOKENS"
Normalizer = Optional[Union[str, float]]


def token_losses(logits: jax.Array, targets: jax.Array, z_loss: float = 0.0):
    """Per-token (cross entropy + z-loss, z-loss, correct) as t5x computes them (no label smoothing)."""
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    z_term = z_loss * jnp.square(log_z)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return log_z - target_logit + z_term, z_term, correct


def loss_sums(logits, targets, weights, z_loss: float = 0.0) -> Mapping[str, jax.Array]:
    """Sums over the batch of the weighted token losses; add these across microbatches."""
    weights = weights.astype(jnp.float32)
    loss, z_term, correct = token_losses(logits, targets, z_loss)
    return {"loss": jnp.sum(loss * weights), "z_loss": jnp.sum(z_term * weights),
            "correct": jnp.sum(correct * weights), "weight": jnp.sum(weights),
            "examples": jnp.sum(jnp.any(weights > 0, axis=-1).astype(jnp.float32))}


def normalizer(sums: Mapping[str, jax.Array], loss_normalizing_factor: Normalizer) -> jax.Array:
    """What the summed loss (and its gradient) is divided by."""
    if loss_normalizing_factor is None:
        return jnp.float32(1.0)
    if loss_normalizing_factor == NUM_REAL_TARGET_TOKENS:
        return jnp.maximum(sums["weight"], 1.0)
    if isinstance(loss_normalizing_factor, str):
        raise ValueError(f"loss_normalizing_factor={loss_normalizing_factor!r}: use None, a number or "
                         f"{NUM_REAL_TARGET_TOKENS!r}")
    return jnp.float32(loss_normalizing_factor)


def token_log_probs(logits, targets, weights) -> jax.Array:
    """weights * log p(target) per token [B, T] (t5x's cross entropy without z-loss, negated)."""
    loss, _, _ = token_losses(logits, targets, 0.0)
    return -loss * weights.astype(jnp.float32)
