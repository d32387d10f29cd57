r"""Matrix-multiply throughput of XLA (JAX) and PyTorch on this CPU, side by side.

The feed-forward and projection GEMMs of the crime-and-punishment model at 16,384 tokens
(`[16384, 256] x [256, 512]` and its weight gradient `[16384, 256]^T x [16384, 512]`), and
the batched per-chunk products of its chunked attention (one step of 4,096 queries: 2 heads
x 64 chunks, each 64 queries against a 128-key window, d_head 64: scores and weighted
values), timed in one process with the same threads. It bounds what any implementation can
reach here: most of a Reformer step's FLOPs are these products. One more row times the
forward product in bfloat16 (not part of the float32 step): on CPUs with bfloat16 matrix
units (Intel AMX) PyTorch uses them and XLA:CPU does not.

It also counts the matrix-multiply FLOPs of Hugging Face's training step for the same
model at `--length` (torch's FlopCounterMode over forward and backward; HF's reversible
backward recomputes each layer as ours does, and our windowed attention does a little
more) and divides them by each library's best measured float32 GEMM rate: the time the step's
matrix products alone take at best. Writes JSON.

  python -m experiments.gemm_throughput
"""
import argparse
import functools
import json
import pathlib
import sys
import time

if __package__ in (None, ""):
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from experiments import common  # noqa: E402  pylint: disable=wrong-import-position

# name: (einsum spec, operand shapes, dtype); FLOPs = 2 * the product of all index sizes.
PRODUCTS = {
    "forward [L,256]x[256,512]": ("ld,df->lf", (16384, 256), (256, 512), "float32"),
    "weight grad [L,256]^T x [L,512]": ("ld,lf->df", (16384, 256), (16384, 512), "float32"),
    "chunk scores [128,64,64]x[128,128,64]^T": ("bqd,bkd->bqk", (128, 64, 64), (128, 128, 64),
                                                "float32"),
    "chunk values [128,64,128]x[128,128,64]": ("bqk,bkd->bqd", (128, 64, 128), (128, 128, 64),
                                               "float32"),
    # Not in the float32 step; what each library makes of bfloat16 on this CPU.
    "forward [L,256]x[256,512] bfloat16": ("ld,df->lf", (16384, 256), (256, 512), "bfloat16"),
}


def einsum_flops(spec: str, a_shape, b_shape) -> int:
  """2 x the product of the sizes of every index of a two-operand `spec`."""
  inputs = spec.split("->")[0].split(",")
  sizes = {}
  for letters, shape in zip(inputs, (a_shape, b_shape)):
    sizes.update(zip(letters, shape))
  flops = 2
  for size in sizes.values():
    flops *= size
  return flops


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
  for name, (spec, a_shape, b_shape, dtype) in PRODUCTS.items():
    # Operands exactly representable in bfloat16, so both libraries multiply the same values.
    a, b = (rng.standard_normal(shape, dtype=np.float32).astype(jax.numpy.bfloat16)
            .astype(np.float32) for shape in (a_shape, b_shape))
    flops = einsum_flops(spec, a_shape, b_shape)
    jax_fn = jax.jit(functools.partial(jax.numpy.einsum, spec))
    ja, jb = (jax.device_put(t.astype(jax.numpy.dtype(dtype))) for t in (a, b))
    ta, tb = (torch.from_numpy(t).to(getattr(torch, dtype)) for t in (a, b))
    torch_fn = functools.partial(torch.einsum, spec, ta, tb)
    # float32: both exact to rounding; bfloat16: outputs rounded to 8 significant bits.
    tolerance = {"rtol": 1e-3, "atol": 1e-2} if dtype == "float32" else {"rtol": 2e-2,
                                                                          "atol": 0.5}
    np.testing.assert_allclose(np.asarray(jax_fn(ja, jb), np.float32),
                               torch_fn().float().numpy(), **tolerance)
    t_jax = _best_seconds(lambda: jax_fn(ja, jb).block_until_ready(), repeats)
    t_torch = _best_seconds(torch_fn, repeats)
    rows.append({"gemm": name, "dtype": dtype, "flops": flops, "jax_s": t_jax, "torch_s": t_torch,
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
  common.add_out_argument(parser)
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  common.configure_jax()
  result = {"machine": common.machine_info(args.threads),
            "gemms": measure(args.repeats, args.threads)}
  for row in result["gemms"]:
    print(f"{row['gemm']:>40}: jax {row['jax_gflops']:6.1f} GFLOP/s, torch "
          f"{row['torch_gflops']:6.1f} GFLOP/s (torch {row['torch_over_jax']:.2f}x)")
  forward_flops, flops = hf_step_matmul_flops(args.length, args.quick)
  best = {lib: max(r[f"{lib}_gflops"] for r in result["gemms"] if r["dtype"] == "float32")
          for lib in ("jax", "torch")}
  result["step_matmuls"] = {
      "length": args.length, "quick": args.quick, "hf_forward_matmul_flops": forward_flops,
      "hf_matmul_flops": flops,
      "seconds_at_best_jax_gemm_rate": flops / (best["jax"] * 1e9),
      "seconds_at_best_torch_gemm_rate": flops / (best["torch"] * 1e9)}
  print(f"HF train step at L={args.length}: {flops / 1e9:.1f} GFLOP in matrix products: "
        f"{result['step_matmuls']['seconds_at_best_jax_gemm_rate']:.2f} s at XLA's best GEMM "
        f"rate, {result['step_matmuls']['seconds_at_best_torch_gemm_rate']:.2f} s at "
        "PyTorch's")
  path = common.write_json(common.out_dir(args) / "gemm_throughput.json", result)
  print(json.dumps({"wrote": str(path)}))
  return result


if __name__ == "__main__":
  main()
