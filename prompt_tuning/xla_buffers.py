"""XLA's buffer assignment of a compiled program, read from its dump (`--xla_dump_to`).

`compiled.memory_analysis()` gives the totals; which buffers make them up is only in the buffer-assignment
dump XLA writes beside the optimized HLO: every allocation (a parameter, the output, the preallocated
temporaries) and the HLO values placed in it, with their shapes, sizes and the op that made them.  Reading it
names the largest buffers of a plan and shows whether any buffer is a gradient of a frozen weight.
"""
import dataclasses
import glob
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

_ALLOCATION = re.compile(r"^allocation (\d+): size (\d+)(.*)$")
_VALUE = re.compile(r"^ value: <(\d+) (\S+) @[^>]*> \(size=(\d+),offset=(\d+)\): (\S+)")
_FROM = re.compile(r"^<(\d+) (\S+) @[^>]*>$")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_SHAPE = re.compile(r"^(\w+)\[([\d,]*)\]")
BYTES = {"f64": 8, "s64": 8, "u64": 8, "f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2, "s16": 2, "u16": 2,
         "s8": 1, "u8": 1, "pred": 1}


@dataclasses.dataclass
class Value:
    name: str          # the HLO instruction
    dtype: str         # 'f32', 'bf16', ...
    dims: Tuple[int, ...]
    size: int          # bytes
    kind: str          # 'parameter', 'output', 'temp', 'constant', 'thread-local'
    op_name: str = ""  # jax's name of the op that made it (e.g. 'jit(_step)/transpose(jvp())/dot_general')

    @property
    def backward(self) -> bool:
        """Made in the backward pass (jax names the VJP's ops 'transpose(jvp(...))')."""
        return "transpose(" in self.op_name

    def describe(self) -> str:
        op = self.op_name.split("/", 1)[-1][-90:] if self.op_name else self.name
        return f"{self.dtype}[{','.join(map(str, self.dims))}] {self.size / 2**20:.1f} MiB ({self.kind}; {op})"


@dataclasses.dataclass
class BufferAssignment:
    allocations: List[Tuple[int, str]]   # (bytes, kind) of each allocation
    values: List[Value]

    def largest(self, n: int = 10, kinds: Sequence[str] = ("temp", "output")) -> List[Value]:
        """The biggest values in allocations of these kinds, one per (shape, op) (a scan repeats them)."""
        seen, out = set(), []
        for v in sorted(self.values, key=lambda v: -v.size):
            key = (v.dtype, v.dims, v.op_name)
            if v.kind in kinds and key not in seen:
                seen.add(key)
                out.append(v)
            if len(out) == n:
                break
        return out

    def temp_bytes_by_dtype(self) -> Dict[str, int]:
        """Bytes of the values placed in temporaries, by dtype (values share memory, so these overlap: the
        split says which dtype the temporaries are made of, not a second total)."""
        out: Dict[str, int] = {}
        for v in self.values:
            if v.kind == "temp":
                out[v.dtype] = out.get(v.dtype, 0) + v.size
        return out


def _kind(rest: str) -> str:
    if "parameter" in rest:
        return "parameter"
    if "output" in rest or "maybe-live-out" in rest:
        return "output"
    if "constant" in rest:
        return "constant"
    if "thread-local" in rest:
        return "thread-local"
    return "temp"


def _parse_shape(text: str) -> Tuple[str, Tuple[int, ...]]:
    m = _SHAPE.match(text)
    if not m:   # a tuple's index table: pointers only
        return "tuple", ()
    return m.group(1), tuple(int(d) for d in m.group(2).split(",") if d)


def parse(assignment_text: str, values_text: str = "") -> BufferAssignment:
    """Parses `*-buffer-assignment.txt` (and, for op names, `*-buffer-assignment-values.txt`)."""
    op_names: Dict[str, str] = {}
    current = None
    for line in values_text.splitlines():
        m = _FROM.match(line)
        if m:
            current = m.group(1)
        elif current and line.startswith(" from instruction:"):
            op = _OP_NAME.search(line)
            op_names[current] = op.group(1) if op else ""
    allocations, values, kind = [], [], "temp"
    for line in assignment_text.splitlines():
        m = _ALLOCATION.match(line)
        if m:
            kind = _kind(m.group(3))
            allocations.append((int(m.group(2)), kind))
            continue
        m = _VALUE.match(line)
        if m:
            dtype, dims = _parse_shape(m.group(5))
            values.append(Value(m.group(2), dtype, dims, int(m.group(3)), kind, op_names.get(m.group(1), "")))
        elif line.startswith("Total bytes used") or line.startswith("Used values"):
            break
    return BufferAssignment(allocations, values)


def xla_upcasts(assignment: BufferAssignment) -> List[Value]:
    """float32 temporaries that XLA made by converting (no jax op names them: XLA:CPU computes bfloat16 dots
    and reductions in float32, so it keeps float32 copies of bfloat16 weights and activations), one per shape."""
    seen, out = set(), []
    for v in sorted(assignment.values, key=lambda v: -v.size):
        if (v.kind == "temp" and v.dtype == "f32" and "convert" in v.name and not v.op_name
                and v.dims not in seen):
            seen.add(v.dims)
            out.append(v)
    return out


def find_dump(dump_dir: str, module_name: str) -> Optional[BufferAssignment]:
    """The newest buffer assignment of module `module_name` (e.g. 'jit__step') in `dump_dir`, or None."""
    paths = sorted(glob.glob(os.path.join(dump_dir, f"module_*.{module_name}.*buffer-assignment.txt")))
    if not paths:
        return None
    path = paths[-1]
    values_path = path.replace("buffer-assignment.txt", "buffer-assignment-values.txt")
    values_text = open(values_path).read() if os.path.exists(values_path) else ""
    return parse(open(path).read(), values_text)


def frozen_gradient_buffers(assignment: BufferAssignment, frozen_shapes: Sequence[Tuple[int, ...]]) -> List[Value]:
    """Backward-pass values (temporaries or outputs) shaped like a frozen weight's per-device shard: what a
    gradient of a frozen weight would be.  `frozen_shapes` holds each frozen leaf's per-device shape (and,
    for scanned layers, that of one layer's slice)."""
    shapes = {tuple(s) for s in frozen_shapes if len(s) >= 2}
    return [v for v in assignment.values
            if v.kind in ("temp", "output") and v.backward and v.dims in shapes and v.dtype in ("f32", "bf16")
            and v.op_name.rsplit("/", 1)[-1] not in _READS]


# Ops that only read or move a weight (the backward pass of scanned layers slices each layer's weights out of
# the stack again): their results have a weight's shape but are no gradient.
_READS = {"dynamic_slice", "slice", "convert_element_type", "broadcast_in_dim", "reshape", "copy", "squeeze",
          "bitcast", "gather"}
