"""Where a compiled program's memory peak comes from, read from XLA's dump (`xla_dump_to`).

`peak_buffers` lists the buffers live at the peak, with their shapes and the source
operation that made them.
"""
import pathlib
import re
from typing import Any, Dict, List, Set, Tuple

_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_FUSION_KIND = re.compile(r'"kind":"([^"]+)"|kind=(k\w+)')
_LIVE = re.compile(r"^\s+([\w.\-]+)\{([\d,]*)\}:\s+(\d+) bytes")
_PHI = re.compile(r"^\s+value: <\d+ ([\w.\-]+)\{([\d,]*)\} \(phi\)")


def _phi_values(assignment_file: pathlib.Path) -> Set[Tuple[str, Tuple[int, ...]]]:
  """The (value name, tuple index) of XLA's phi values (a loop's or conditional's merge
  of values), from its buffer assignment: they own no storage, their operands' buffers
  hold them."""
  phis = set()
  for line in assignment_file.read_text().splitlines():
    m = _PHI.match(line)
    if m:
      phis.add((m.group(1), tuple(int(i) for i in m.group(2).split(",") if i)))
  return phis


def _find_dump(dump_dir: str, module: str, suffix: str) -> pathlib.Path:
  files = sorted(pathlib.Path(dump_dir).glob(f"*{module}*{suffix}"),
                 key=lambda p: p.stat().st_size)
  if not files:
    raise FileNotFoundError(f"no *{module}*{suffix} in {dump_dir}: compile with "
                            f"compiler_options={{'xla_dump_to': {dump_dir!r}}}")
  return files[-1]


def _split_shape(text: str):
  """(shape, rest of the line) of an HLO instruction's right-hand side; tuples kept whole."""
  if not text.startswith("("):
    shape, _, rest = text.partition(" ")
    return shape, rest
  depth = 0
  for i, ch in enumerate(text):
    depth += {"(": 1, ")": -1}.get(ch, 0)
    if depth == 0:
      return text[:i + 1], text[i + 1:].lstrip()
  return text, ""


def _tuple_elements(shape: str) -> List[str]:
  """The top-level element shapes of a tuple shape `(a, b, ...)`."""
  inner = re.sub(r"/\*[^*]*\*/", "", shape[1:-1])
  elements, depth, start = [], 0, 0
  for i, ch in enumerate(inner):
    depth += {"(": 1, "[": 1, "{": 1, ")": -1, "]": -1, "}": -1}.get(ch, 0)
    if ch == "," and depth == 0:
      elements.append(inner[start:i].strip())
      start = i + 1
  elements.append(inner[start:].strip())
  return elements


def _instructions(hlo_file: pathlib.Path) -> Dict[str, Dict[str, str]]:
  """name -> {'shape', 'opcode', 'op_name'} of every instruction of the optimised HLO."""
  table = {}
  for line in hlo_file.read_text().splitlines():
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    name = m.group(1)
    shape, rest = _split_shape(m.group(2))
    opcode = rest.partition("(")[0].strip()
    if not re.fullmatch(r"[\w\-]+", opcode or "?"):
      continue
    op_name = _OP_NAME.search(line)
    kind = _FUSION_KIND.search(line) if opcode == "fusion" else None
    if kind:
      opcode = f"fusion:{kind.group(1) or kind.group(2)}"
    table[name] = {"shape": re.sub(r"\{[\d,:A-Z()]*\}", "", shape),
                   "opcode": opcode,
                   "op_name": op_name.group(1) if op_name else ""}
  return table


def _short_source(op_name: str) -> str:
  """A compact source label: the op_name without jit/while/closed_call wrappers."""
  parts = [p for p in op_name.split("/")
           if p and not p.startswith(("jit(train_step)", "jit(main)", "while", "body",
                                      "closed_call", "checkpoint", "remat"))]
  return "/".join(parts)


def peak_buffers(dump_dir: str, module: str = "jit_train_step", top: int = 20
                 ) -> Dict[str, Any]:
  """The buffers live at the memory peak of a compiled program, from XLA's dump.

  Returns:
    {'peak_live_bytes': sum of the buffers live at the peak (values sharing a buffer, as
    loop and conditional outputs (phi values) do with their operands, counted once), 'peak_instruction': the
    instruction executing then (name, opcode, source op), 'buffers': the `top` largest
    live buffers (bytes, shape, opcode, source op), 'by_shape': bytes grouped by shape
    and opcode (all live buffers), 'by_source': bytes grouped by source op (top 15)}.
  """
  live_file = _find_dump(dump_dir, module, "after_optimizations-live-range.txt")
  table = _instructions(_find_dump(dump_dir, module, "after_optimizations.txt"))
  lines = live_file.read_text().splitlines()
  sequence, peak_at, live = {}, None, []
  section = None
  for line in lines:
    if line.strip() == "InstructionSequence:":
      section = "sequence"
      continue
    m = re.match(r"^\s+Live ranges at (\d+) \(peak\):", line)
    if m:
      section, peak_at = "peak", int(m.group(1))
      continue
    if line.startswith("  ") and not line.startswith("    "):
      section = None
    if section == "sequence":
      m = re.match(r"^\s+(\d+):(\S+)", line)
      if m:
        sequence[int(m.group(1))] = m.group(2)
    elif section == "peak":
      m = _LIVE.match(line)
      if m:
        index = tuple(int(i) for i in m.group(2).split(",") if i)
        live.append((m.group(1), index, int(m.group(3))))
  if peak_at is None:
    raise ValueError(f"{live_file} has no 'Live ranges at N (peak)' section")
  # A phi value is held in its operands' buffers, which are listed themselves.
  phis = _phi_values(_find_dump(dump_dir, module,
                                "after_optimizations-buffer-assignment.txt"))
  live = [(name, index, size) for name, index, size in live if (name, index) not in phis]

  def describe(name, index=(), size=None):
    info = table.get(name, {"shape": "?", "opcode": "?", "op_name": ""})
    shape = info["shape"]
    for i in index:
      elements = _tuple_elements(shape) if shape.startswith("(") else []
      shape = elements[i] if i < len(elements) else "?"
    row = {"name": name + (str(list(index)) if index else ""), "shape": shape,
           "opcode": info["opcode"], "source": _short_source(info["op_name"])}
    if size is not None:
      row = {"bytes": size, **row}
    return row

  rows = [describe(name, index, size) for name, index, size in live]
  rows.sort(key=lambda r: -r["bytes"])
  by_shape, by_source = {}, {}
  for r in rows:
    key = f"{r['shape']} {r['opcode']}"
    count, total = by_shape.get(key, (0, 0))
    by_shape[key] = (count + 1, total + r["bytes"])
    by_source[r["source"]] = by_source.get(r["source"], 0) + r["bytes"]
  return {
      "peak_live_bytes": sum(size for _, _, size in live),
      "peak_instruction": describe(sequence.get(peak_at, "?")),
      "buffers": rows[:top],
      "by_shape": [{"shape_opcode": k, "count": c, "bytes": b}
                   for k, (c, b) in sorted(by_shape.items(), key=lambda kv: -kv[1][1])][:top],
      "by_source": [{"source": k, "bytes": b}
                    for k, b in sorted(by_source.items(), key=lambda kv: -kv[1])][:15],
  }
