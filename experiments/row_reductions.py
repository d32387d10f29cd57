r"""Row reductions of one chunked-attention step on XLA:CPU: library calls against ours.

One step of the crime-and-punishment model's chunked attention has logits
`[1, 2, 64, 64, 128]` (2 heads x 64 chunks of 64 queries, each against a 128-key window).
XLA:CPU splits a row reduction into a reduce-window and a reduce; `layers/softmax.py`
computes row maxima as a halving tree of elementwise maxima and row sums as products with
a vector of ones. This times both (best of `--repeats`, compiled, same process), for the
maxima, the sums, the softmax with its logsumexp, and the softmax's forward and backward
pass, and checks that they agree. Writes JSON.

  python -m experiments.row_reductions
"""
import argparse
import pathlib
import sys
import time

if __package__ in (None, ""):
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from experiments import common  # noqa: E402  pylint: disable=wrong-import-position

STEP_LOGITS = (1, 2, 64, 64, 128)


def _best_seconds(fn, arg, repeats):
  fn(arg).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn(arg).block_until_ready()
    times.append(time.perf_counter() - start)
  return min(times)


def variants():
  """name: (library function, ours), each `logits -> array`."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from reformer_jax.layers import softmax  # pylint: disable=import-outside-toplevel

  def library_softmax_lse(x):
    lse = jax.nn.logsumexp(x, axis=-1)
    return jnp.exp(x - lse[..., None]), lse

  def loss(fn):
    """A scalar of probs and lse, so its gradient runs the softmax's backward pass."""
    def total(x):
      probs, lse = fn(x)
      return jnp.sum(probs * x) + jnp.sum(lse)
    return jax.grad(total)

  return {
      "row max": (lambda x: jnp.max(x, axis=-1, keepdims=True), softmax.row_max),
      "row sum": (lambda x: jnp.sum(x, axis=-1, keepdims=True), softmax.row_sum),
      "softmax + logsumexp": (lambda x: library_softmax_lse(x)[0],
                              lambda x: softmax.softmax_lse(x)[0]),
      "softmax forward + backward": (loss(library_softmax_lse), loss(softmax.softmax_lse)),
  }


def measure(shape, repeats):
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  logits = jax.device_put(np.random.default_rng(0).standard_normal(shape, dtype=np.float32))
  rows = []
  for name, (library, ours) in variants().items():
    library, ours = jax.jit(library), jax.jit(ours)
    np.testing.assert_allclose(np.asarray(ours(logits)), np.asarray(library(logits)),
                               rtol=1e-5, atol=1e-5)
    t_library = _best_seconds(library, logits, repeats)
    t_ours = _best_seconds(ours, logits, repeats)
    rows.append({"reduction": name, "shape": list(shape), "library_s": t_library,
                 "ours_s": t_ours, "library_over_ours": t_library / t_ours})
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--repeats", type=int, default=50)
  parser.add_argument("--quick", action="store_true", help="small logits")
  common.add_out_argument(parser)
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  common.configure_jax()
  shape = (1, 2, 4, 8, 16) if args.quick else STEP_LOGITS
  result = {"machine": common.machine_info(common.default_threads()), "quick": args.quick,
            "reductions": measure(shape, args.repeats)}
  for row in result["reductions"]:
    print(f"{row['reduction']:>28}: library {row['library_s'] * 1e3:6.3f} ms, ours "
          f"{row['ours_s'] * 1e3:6.3f} ms ({row['library_over_ours']:.2f}x)")
  path = common.write_json(common.out_dir(args) / "row_reductions.json", result)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
