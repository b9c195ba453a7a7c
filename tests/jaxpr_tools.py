"""Helpers for tests that look inside a program (shared by test_maml.py and test_text.py)."""

import jax
import jax.numpy as jnp

REMAT = jax.make_jaxpr(jax.checkpoint(jnp.sin))(1.0).eqns[0].primitive.name  # this JAX's name for jax.checkpoint


def primitive_names(jaxpr):
    """Every primitive in ``jaxpr`` and in the jaxprs nested in its equations (scan / cond / remat bodies)."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    names = []
    for eqn in jaxpr.eqns:
        names.append(eqn.primitive.name)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
                    names.extend(primitive_names(sub))
    return names
