"""Matrix-product FLOPs of a jaxpr with loop bodies counted as many times as they run (shared by the benchmarks)."""

from __future__ import annotations

import math


def count_matmul_flops(jaxpr) -> tuple[float, bool]:
    """2*M*N*K over dot_general / conv in a jaxpr, scan bodies multiplied by their length (XLA's cost analysis
    counts a loop body once). Returns (flops, saw_while_loop_of_unknown_trip_count)."""
    unknown = False

    def sub_jaxprs(value):
        if hasattr(value, "eqns"):
            yield value
        elif hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
            yield value.jaxpr
        elif isinstance(value, (tuple, list)):
            for v in value:
                yield from sub_jaxprs(v)

    def count(jx) -> float:
        nonlocal unknown
        total = 0.0
        for eqn in jx.eqns:
            name = eqn.primitive.name
            if name == "dot_general":
                (lhs_contract, _), _ = eqn.params["dimension_numbers"]
                lhs = eqn.invars[0].aval.shape
                k = math.prod(lhs[i] for i in lhs_contract)
                total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * k
                continue
            if name == "conv_general_dilated":
                rhs = eqn.invars[1].aval.shape
                spec = eqn.params["dimension_numbers"].rhs_spec  # (out, in, *spatial)
                k = rhs[spec[1]] * math.prod(rhs[d] for d in spec[2:])
                total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * k
                continue
            subs = [count(j) for v in eqn.params.values() for j in sub_jaxprs(v)]
            if not subs:
                continue
            if name == "scan":
                total += eqn.params["length"] * sum(subs)
            elif name == "cond":
                total += max(subs)
            else:
                if name == "while":
                    unknown = True
                total += sum(subs)
        return total

    return count(jaxpr.jaxpr if hasattr(jaxpr, "jaxpr") else jaxpr), unknown
