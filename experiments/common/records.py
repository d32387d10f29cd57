"""Results records: the machine they were taken on, configs as JSON, units."""
import dataclasses
import json
import os
import pathlib
import platform
import time
from typing import Any, Dict, List, Optional

MiB = 2 ** 20
GiB = 2 ** 30


def machine_info(threads: int) -> Dict[str, Any]:
  """Where and how the numbers were taken (load average included: the CPU may be shared)."""
  import jax  # pylint: disable=import-outside-toplevel
  info = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "threads": threads,
          "load_average_1_5_15": list(os.getloadavg()), "python": platform.python_version(),
          "jax": jax.__version__, "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "time": time.strftime("%Y-%m-%d %H:%M:%S")}
  try:
    with open("/proc/meminfo") as f:
      info["mem_total_bytes"] = int(f.readline().split()[1]) * 1024
  except OSError:
    pass
  return info


def write_json(path: pathlib.Path, record: Dict[str, Any]) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(record, indent=1, default=_jsonable) + "\n")
  return path


def save_figure(fig, path: pathlib.Path):
  """Writes a matplotlib figure (tight layout, 100 dpi) and closes it."""
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _jsonable(value):
  if dataclasses.is_dataclass(value):
    return dataclasses.asdict(value)
  return str(value)


def config_record(config) -> Dict[str, Any]:
  """A ReformerConfig as a JSON-friendly dict (dtype by name)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  record = dataclasses.asdict(config)
  record["dtype"] = np.dtype(config.dtype).name
  return record


def gib(n_bytes: Optional[float]) -> Optional[float]:
  return None if n_bytes is None else n_bytes / GiB


def powers_of_two(lo: int, hi: int) -> List[int]:
  """[2^lo, ..., 2^hi]."""
  return [2 ** k for k in range(lo, hi + 1)]
