r"""A small ListOps study on CPU: a Reformer classifier against full attention of the same
size and the majority-class baseline.

ListOps is generated locally (`reformer_jax.data.listops`, Long Range Arena's rules) with
short expressions so that it learns on a 2-core CPU in minutes. Both models are
`ReformerForSequenceClassification` with the same widths, depth, optimiser, steps and
batches; they differ only in attention: "reformer" alternates local and LSH attention
(chunks of 32, one chunk of look-ahead each, 2 hash rounds), "full" uses plain full
attention. This script runs its own AdamW loop (optax) around the model's loss sums; the
trainer runs the same setting from gin (configs/listops_small.gin, docs/encoders.md).

  python -m experiments.listops_small               # ~9 min on 2 shared cores
  python -m experiments.listops_small --quick       # a smoke run (fewer steps, examples)

Writes `<out>/listops_small.json`: test accuracy of each model and of the majority class,
the training loss curve (every 100 steps), wall times, settings and the machine.
"""
import argparse
import pathlib
import sys
import time

if __package__ in (None, ""):
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import flax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from experiments import common  # noqa: E402  pylint: disable=wrong-import-position
from reformer_jax.data.listops_task import listops  # noqa: E402
from reformer_jax.models import ReformerConfig, ReformerForSequenceClassification  # noqa: E402

DATA = dict(min_length=10, max_length=127, max_depth=5, max_args=5, op_probability=0.3)
SEQ_LEN = 128
MODEL = dict(d_model=64, d_ff=128, n_heads=2, d_head=32, n_layers=4, causal=False,
             positional="axial", max_len=SEQ_LEN, axial_shape=(8, 16), axial_dims=(16, 48),
             dropout_rate=0.1, attention_dropout=0.1, local_chunk_len=32, lsh_chunk_len=32,
             local_n_chunks_after=1, lsh_n_chunks_after=1, n_hashes=2, n_buckets=4,
             loss_chunk_len=SEQ_LEN)
ATTENTION = {"reformer": ("local", "lsh"), "full": ("full",)}


def train_and_test(data, attention, steps, batch_size, seed, log):
  """Trains one classifier; returns (test accuracy, loss curve, wall seconds)."""
  config = ReformerConfig(vocab_size=data.vocab_size, attention_types=attention, **MODEL)
  model = ReformerForSequenceClassification(config, num_labels=data.num_labels)
  batch = data.train_batch(0, batch_size, SEQ_LEN)
  key = jax.random.PRNGKey(seed)
  params = jax.jit(model.init)({"params": key, "hash": key, "dropout": key}, batch["inputs"],
                               batch["mask"])["params"]
  optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(
      optax.warmup_cosine_decay_schedule(0., 2e-3, steps // 20, steps), weight_decay=0.01))
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, opt_state, batch, key):
    def loss(p):
      sums = model.apply({"params": p}, batch["inputs"], batch["mask"], labels=batch["labels"],
                         rngs={"dropout": key, "hash": jax.random.fold_in(key, 1)})
      return sums["loss"] / sums["weight"]
    value, grads = jax.value_and_grad(loss)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value

  @jax.jit
  def predict(params, batch, key):
    return jnp.argmax(model.apply({"params": params}, batch["inputs"], batch["mask"],
                                  deterministic=True, rngs={"hash": key}), axis=-1)

  start, curve, recent = time.time(), [], []
  for i in range(steps):
    batch = {k: jnp.asarray(v) for k, v in data.train_batch(i, batch_size, SEQ_LEN).items()}
    params, opt_state, value = step(params, opt_state, batch, jax.random.fold_in(key, i))
    recent.append(float(value))
    if (i + 1) % 100 == 0 or i + 1 == steps:
      curve.append({"step": i + 1, "loss": float(np.mean(recent))})
      recent = []
      log(f"{attention} step {i + 1}: loss {curve[-1]['loss']:.3f}")
  train_seconds = time.time() - start
  correct = total = 0.
  for batch in data.eval_batches(batch_size, SEQ_LEN, split="test"):
    guess = np.asarray(predict(params, {k: jnp.asarray(v) for k, v in batch.items()},
                               jax.random.PRNGKey(seed + 1)))
    correct += float(np.sum((guess == batch["labels"]) * batch["weights"]))
    total += float(np.sum(batch["weights"]))
  return correct / total, curve, train_seconds


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="a smoke run")
  parser.add_argument("--steps", type=int, default=None, help="training steps per model")
  parser.add_argument("--seed", type=int, default=0)
  common.add_out_argument(parser)
  args = parser.parse_args(argv)
  common.configure_jax()
  steps = args.steps or (30 if args.quick else 1000)
  sizes = (200, 50, 100) if args.quick else (20_000, 1_000, 2_000)
  batch_size = 32
  log = lambda message: print(message, flush=True)
  started = time.time()
  data = listops(seed=args.seed, n_train=sizes[0], n_eval=sizes[1], n_test=sizes[2], **DATA)
  counts = data.label_counts("test")
  record = {"data": {**DATA, "seq_len": SEQ_LEN, "n_train": sizes[0], "n_test": sizes[2],
                     "test_label_counts": counts.tolist()},
            "model": {k: list(v) if isinstance(v, tuple) else v for k, v in MODEL.items()},
            "train": {"steps": steps, "batch_size": batch_size, "optimizer":
                      "adamw 2e-3 warmup-cosine, weight decay 0.01, clip 1.0",
                      "seed": args.seed},
            "majority_class_accuracy": float(counts.max() / counts.sum()), "models": {}}
  for name, attention in ATTENTION.items():
    accuracy, curve, seconds = train_and_test(data, attention, steps, batch_size, args.seed,
                                              log)
    record["models"][name] = {"attention_types": list(attention), "test_accuracy": accuracy,
                              "train_seconds": seconds, "loss_curve": curve}
    log(f"{name}: test accuracy {accuracy:.4f} ({seconds:.0f} s)")
  record["wall_seconds"] = time.time() - started
  record["machine"] = {**common.machine_info(threads=common.default_threads()),
                       "flax": flax.__version__, "optax": optax.__version__}
  path = common.write_json(common.out_dir(args) / "listops_small.json", record)
  log(f"majority class {record['majority_class_accuracy']:.4f}; wrote {path}")


if __name__ == "__main__":
  main()
