"""The duplication task end to end: configs, a tiny model copying through LSH, the table.

`test_tiny_model_copies_through_lsh` trains a one-layer LSH model with the trainer's own
compiled step on `0 w 0 w` sequences (w: 7 symbols) for 200 steps and checks that its loss
on the copied half falls far below its loss on the first w, which no model can predict.
Copying needs the query at position n + 2 + i to find the key at position i + 2 through
hashing, sorting, chunking and the causal masks, so this checks all of them on every run;
the trained model's earlier predictions must also not depend on the last token.
"""
import math

import jax
import numpy as np

from experiments import duplication_table
from reformer_jax.layers.chunking import chunk_positions
from reformer_jax.models import ReformerLM
from reformer_jax.trainer import gin_setup, optim, sharding, steps

TINY = ["N_SYMBOLS=7", "SEQ_LEN=16", "VOCAB_SIZE=8", "N_HASHES=2", "TRAIN_STEPS=200",
        "ReformerConfig.lsh_chunk_len=4", "ReformerConfig.n_buckets=4",
        "OptimizerConfig.learning_rate=1e-2", "OptimizerConfig.warmup_steps=10"]


def _experiment(gin_file, bindings=()):
  gin_setup.parse([gin_file], list(bindings))
  return gin_setup.make_experiment()


def test_paper_config_matches_the_paper():
  exp = _experiment("duplication.gin")
  data = exp.make_data()
  assert (data.n_symbols, data.vocab_size, exp.seq_len) == (511, 128, 1024)
  model = exp.model
  assert (model.n_layers, model.d_model, model.d_ff, model.n_heads) == (1, 256, 256, 4)
  assert model.attention_types == ("lsh",) and model.causal
  batch = data.train_batch(0, 2, exp.seq_len)
  assert np.all(batch["weights"][:, :513] == 0) and np.all(batch["weights"][:, 513:] == 1)


def test_small_config_is_a_scaled_paper_config():
  exp = _experiment("duplication_small.gin")
  data = exp.make_data()
  model = exp.model
  assert exp.seq_len == 2 * data.n_symbols + 2 == model.max_len
  assert model.vocab_size == data.vocab_size
  assert model.n_layers == 1 and model.d_model == model.d_ff
  # LSH really hashes (it falls back to full attention when the length fits in one chunk).
  assert chunk_positions(exp.seq_len, model.lsh_chunk_len)[1] > 1


def _half_losses(config, batch, n_symbols, key):
  """A jitted params -> (mean loss on the first w (targets 1..n), mean loss on the copy)."""
  model = ReformerLM(config.replace(deterministic=True))
  first = np.zeros_like(batch["weights"])
  first[:, 1:n_symbols + 1] = 1.
  weights = np.stack([first, batch["weights"]])  # [2, batch, length]

  @jax.jit
  def losses(params):
    def loss(w):
      sums = model.apply({"params": params}, batch["inputs"], targets=batch["targets"],
                         weights=w, rngs={"hash": key})
      return sums["loss"] / sums["weight"]
    return jax.lax.map(loss, weights)

  return lambda params: tuple(float(x) for x in losses(params))


def test_tiny_model_copies_through_lsh():
  exp = _experiment("duplication_small.gin", TINY)
  config, data = exp.model, exp.make_data()
  assert config.layer_attention_types() == ("lsh",) and config.n_hashes == 2
  assert chunk_positions(exp.seq_len, config.lsh_chunk_len)[1] == 4
  mesh = sharding.make_mesh()
  tx, _ = optim.make_optimizer(exp.optimizer, exp.train_steps)
  state = steps.make_init_state(config, tx, 0, exp.seq_len, mesh)()
  (batch,) = data.eval_batches(32, exp.seq_len, 1)
  half_losses = _half_losses(config, batch, data.n_symbols, jax.random.PRNGKey(1))
  first0, copy0 = half_losses(state.params)
  assert copy0 > 0.8 * first0  # untrained: the copy is as unpredictable as w

  train_step = steps.compile_train_step(config, tx, mesh)
  for step in range(exp.train_steps):
    state, _ = train_step(state, steps.split_micro(
        data.train_batch(step, exp.batch_size, exp.seq_len), 1))
  first, copy = half_losses(state.params)
  uniform = math.log(data.vocab_size - 1)
  assert first > 0.8 * uniform, (first, uniform)  # w itself stays unpredictable
  assert copy < 0.25 * first, (copy, first)

  # Strictly causal end to end: changing the last token changes no earlier prediction.
  model = ReformerLM(config.replace(deterministic=True))
  logits = jax.jit(lambda tokens: model.apply({"params": state.params}, tokens,
                                              rngs={"hash": jax.random.PRNGKey(2)}))
  changed = batch["inputs"].copy()
  changed[:, -1] = changed[:, -1] % (data.vocab_size - 1) + 1
  before, after = np.asarray(logits(batch["inputs"])), np.asarray(logits(changed))
  np.testing.assert_allclose(after[:, :-1], before[:, :-1], atol=1e-5)
  assert np.abs(after[:, -1] - before[:, -1]).max() > 1e-3


def test_table_markdown_puts_ours_beside_the_paper():
  rows = {row: {"wall_s": 12.3, "summary": {"step": 2000}, "learned_at_step": 700,
                "eval": {c: {"accuracy": a} for c, a in zip(
                    duplication_table.COLUMNS, (1.0, 0.9996, 0.5, 0.25, 0.0))}}
          for row in duplication_table.ROWS}
  result = {
      "setting": {"gin_file": "duplication_small.gin", "gin_bindings": [],
                  "task": {"n_symbols": 63, "vocab_size": 32, "seq_len": 128},
                  "eval_batches": 8, "eval_batch_size": 16, "train_steps": 2000,
                  "log_every": 100,
                  "batch_size": 16, "seed": 0,
                  "model": {"n_layers": 1, "d_model": 64, "d_ff": 64, "n_heads": 4,
                            "d_head": 16, "positional": "learned", "lsh_chunk_len": 8,
                            "n_buckets": 32, "lsh_n_chunks_before": 1},
                  "optimizer": {"name": "adam", "learning_rate": 3e-3,
                                "schedule": "cosine", "warmup_steps": 100}},
      "machine": {"cpu_count": 2, "platform": "linux", "load_average_1_5_15": [1., 1., 1.],
                  "jax": "0"},
      "columns": list(duplication_table.COLUMNS),
      "variants": {"strict": {"title": "strict", "bindings": [], "rows": rows}}}
  text = duplication_table.markdown(result)
  table = [line for line in text.splitlines() if line.startswith("| LSH-1 |")]
  assert table == ["| LSH-1 | 100% (0.8%) | 99.9% (99.9%) | 50.0% (99.6%) | 25.0% (94.8%) "
                   "| 0.0% (77.9%) | 2000 | 700 | 12 s |"]
  assert "| Full | 100% (100%) | 99.9% (94.8%) |" in text
