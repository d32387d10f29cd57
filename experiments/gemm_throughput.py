r"""Matrix-multiply throughput of XLA (JAX) and PyTorch on this CPU, side by side.

The feed-forward and projection GEMMs of the crime-and-punishment model at 16,384 tokens
(`[16384, 256] x [256, 512]` and its weight gradient `[16384, 256]^T x [16384, 512]`), timed
in one process with the same threads. It bounds what any implementation can reach here:
most of a Reformer step's FLOPs are these GEMMs.

It also counts the matrix-multiply FLOPs of Hugging Face's training step for the same
model at `--length` (torch's FlopCounterMode over forward and backward; HF's reversible
backward recomputes each layer as ours does, and our windowed attention does a little
more) and divides them by each library's best measured GEMM rate: the time the step's
matrix products alone take at best. Writes JSON.

  python -m experiments.gemm_throughput
"""
import argparse
import json
import pathlib
import sys
import time

if __package__ in (None, ""):
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from experiments import common  # noqa: E402  pylint: disable=wrong-import-position

SHAPES = {"forward [L,256]x[256,512]": ((16384, 256), (256, 512), False),
          "weight grad [L,256]^T x [L,512]": ((16384, 256), (16384, 512), True)}


def _best_seconds(fn, repeats):
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


def measure(repeats: int, threads: int):
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(threads)
  rng = np.random.default_rng(0)
  rows = []
  for name, (a_shape, b_shape, transpose_a) in SHAPES.items():
    a = rng.standard_normal(a_shape, dtype=np.float32)
    b = rng.standard_normal(b_shape, dtype=np.float32)
    flops = 2 * a.shape[0] * a.shape[1] * b.shape[1]
    jax_fn = jax.jit((lambda x, y: x.T @ y) if transpose_a else (lambda x, y: x @ y))
    ja, jb = jax.device_put(a), jax.device_put(b)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    torch_fn = (lambda: ta.T @ tb) if transpose_a else (lambda: ta @ tb)
    np.testing.assert_allclose(np.asarray(jax_fn(ja, jb)), torch_fn().numpy(), rtol=1e-3,
                               atol=1e-2)
    t_jax = _best_seconds(lambda: jax_fn(ja, jb).block_until_ready(), repeats)
    t_torch = _best_seconds(torch_fn, repeats)
    rows.append({"gemm": name, "flops": flops, "jax_s": t_jax, "torch_s": t_torch,
                 "jax_gflops": flops / t_jax / 1e9, "torch_gflops": flops / t_torch / 1e9,
                 "torch_over_jax": t_jax / t_torch})
  return rows


def hf_step_matmul_flops(length: int, quick: bool = False):
  """Matrix-multiply FLOPs of HF's (forward, forward + backward) for crime_and_punishment
  at `length`."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  from torch.utils._python_dispatch import TorchDispatchMode  # pylint: disable=import-outside-toplevel
  from torch.utils.flop_counter import flop_registry  # pylint: disable=import-outside-toplevel
  from experiments import hf_side_by_side  # pylint: disable=import-outside-toplevel
  base = dict(common.QUICK_CHANGES, n_layers=2) if quick else {}
  config, _ = common.crime_and_punishment(
      **base, axial_shape=list(hf_side_by_side.axial_shape(length)))
  torch.manual_seed(0)
  model = transformers.ReformerModelWithLMHead(
      transformers.ReformerConfig(**hf_side_by_side.hf_config(config, length)))
  model.train()
  tokens = np.random.default_rng(0).integers(0, config.vocab_size, (1, length))
  inputs = torch.from_numpy(tokens.astype(np.int64))
  class MatmulFlops(TorchDispatchMode):
    """Counts FLOPs of the ops in torch's FLOP registry (matrix products, convolutions).
    (FlopCounterMode's module hooks fail inside HF's reversible autograd.Function.)"""
    total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
      kwargs = kwargs or {}
      out = func(*args, **kwargs)
      count = flop_registry.get(func._overloadpacket)
      if count is not None:
        self.total += count(*args, **kwargs, out_val=out)
      return out

  with MatmulFlops() as counter:
    forward_flops = 0
    loss = model(input_ids=inputs, labels=inputs).loss
    forward_flops = counter.total
    loss.backward()
  return int(forward_flops), int(counter.total)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--threads", type=int, default=common.default_threads())
  parser.add_argument("--length", type=int, default=16384,
                        help="sequence length of the counted HF training step")
  parser.add_argument("--quick", action="store_true", help="tiny model for the FLOP count")
  parser.add_argument("--out", default=str(common.RESULTS_DIR))
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  common.configure_jax()
  result = {"machine": common.machine_info(args.threads),
            "gemms": measure(args.repeats, args.threads)}
  for row in result["gemms"]:
    print(f"{row['gemm']:>34}: jax {row['jax_gflops']:6.1f} GFLOP/s, torch "
          f"{row['torch_gflops']:6.1f} GFLOP/s (torch {row['torch_over_jax']:.2f}x)")
  forward_flops, flops = hf_step_matmul_flops(args.length, args.quick)
  best = {lib: max(r[f"{lib}_gflops"] for r in result["gemms"]) for lib in ("jax", "torch")}
  result["step_matmuls"] = {
      "length": args.length, "quick": args.quick, "hf_forward_matmul_flops": forward_flops,
      "hf_matmul_flops": flops,
      "seconds_at_best_jax_gemm_rate": flops / (best["jax"] * 1e9),
      "seconds_at_best_torch_gemm_rate": flops / (best["torch"] * 1e9)}
  print(f"HF train step at L={args.length}: {flops / 1e9:.1f} GFLOP in matrix products: "
        f"{result['step_matmuls']['seconds_at_best_jax_gemm_rate']:.2f} s at XLA's best GEMM "
        f"rate, {result['step_matmuls']['seconds_at_best_torch_gemm_rate']:.2f} s at "
        "PyTorch's")
  path = common.write_json(pathlib.Path(args.out) / "gemm_throughput.json", result)
  print(json.dumps({"wrote": str(path)}))
  return result


if __name__ == "__main__":
  main()
