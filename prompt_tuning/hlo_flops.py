"""Matmul FLOPs of an optimized HLO module, counting each while loop's body as many times as it runs.

XLA's `cost_analysis()` counts a while loop's body once, so a program with scanned layers or microbatches
reports a fraction of its work (1/24 of an XXL stack's).  This walks the compiled module's text: every `dot`
costs 2 x (output elements) x (contracted elements); a fusion or call costs what its computation costs; a
while loop costs its body times XLA's `known_trip_count`.  Element-wise work is not counted (for T5 the
dots are nearly all of it).
"""
import json
import re
from typing import Dict, List, Tuple

_HEADER = re.compile(r"^(?:ENTRY )?%(\S+) \((.*)\) -> .* \{$")
_INSTR = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\(.*?\)|\S+?)(?:\{[^}]*\})? (\w[\w-]*)\((.*)$")
_PARAM = re.compile(r"(\S+): (\w+\[[\d,]*\])")
_DIMS = re.compile(r"^\w+\[([\d,]*)\]")


def _dims(shape: str) -> Tuple[int, ...]:
    m = _DIMS.match(shape)
    return tuple(int(d) for d in m.group(1).split(",") if d) if m else ()


def _prod(xs) -> int:
    out = 1
    for x in xs:
        out *= x
    return out


def _computations(hlo: str):
    comps: Dict[str, List[str]] = {}
    shapes: Dict[str, Dict[str, Tuple[int, ...]]] = {}
    entry, current = None, None
    for line in hlo.splitlines():
        m = _HEADER.match(line)
        if m:
            current = m.group(1)
            if line.startswith("ENTRY"):
                entry = current
            comps[current] = []
            shapes[current] = {name.lstrip("%"): _dims(shape) for name, shape in _PARAM.findall(m.group(2))}
            continue
        if current is None:
            continue
        if line.startswith("}"):
            current = None
            continue
        m = _INSTR.match(line)
        if m:
            shapes[current][m.group(1)] = _dims(m.group(2))
            comps[current].append(line)
    return comps, shapes, entry


def _trip_count(line: str) -> int:
    m = re.search(r'backend_config=(\{.*\})\s*$', line)
    if m:
        try:
            n = json.loads(m.group(1)).get("known_trip_count", {}).get("n")
            if n is not None:
                return int(n)
        except ValueError:
            pass
    m = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
    return int(m.group(1)) if m else 1


def matmul_flops(hlo: str) -> float:
    """2 x M x N x K summed over every dot the module executes (while bodies times their trip counts)."""
    comps, shapes, entry = _computations(hlo)
    memo: Dict[str, float] = {}

    def cost(name: str) -> float:
        if name in memo:
            return memo[name]
        memo[name] = 0.0   # guards recursion
        total = 0.0
        for line in comps.get(name, []):
            m = _INSTR.match(line)
            out, op, rest = _dims(m.group(2)), m.group(3), m.group(4)
            if op == "dot":
                lhs = re.match(r"%?([^,\s)]+)", rest).group(1)
                contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", line)
                lhs_dims = shapes[name].get(lhs, ())
                k = _prod(lhs_dims[int(i)] for i in contracting.group(1).split(",") if i) if contracting else 1
                total += 2.0 * _prod(out) * k
            elif op == "while":
                body = re.search(r"body=%(\S+?)[,\s]", line + " ").group(1)
                total += _trip_count(line) * cost(body)
            else:
                for called in re.findall(r"(?:calls|to_apply)=%([^,\s]+)", line):
                    total += cost(called)
                branches = re.search(r"branch_computations=\{([^}]*)\}", line)
                if branches:
                    total += max(cost(b.strip().lstrip("%")) for b in branches.group(1).split(","))
        memo[name] = total
        return total

    return cost(entry) if entry else 0.0
