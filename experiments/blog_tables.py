r"""Our versions of the four memory tables of the Hugging Face Reformer blog post.

All figures are XLA's compiled memory analysis on CPU (peak = argument + temp + output -
alias, parameters included; deterministic), so nothing has to fit in this machine's RAM.
Except in table 2, the feed-forward is unchunked (`ff_chunk_size=None`), as in the
Hugging Face configurations the blog used.

1. global vs local+LSH attention: the enwik8 model (configs/enwik8.gin), inference,
   batch 1, 2048 .. 16384 tokens; "global" replaces every local layer by full attention
   and every LSH layer by full shared-QK attention (same parameters).
2. chunked feed-forward on / off: the enwik8 model with 2 heads and d_ff 16384, inference,
   batch 8, 1024 / 2048 / 4096 tokens; feed-forward in chunks of `--ff_chunk` positions.
3. reversible vs ordinary residual layers: the enwik8 model with 4 / 8 / 12 layers,
   training (forward + backward), batch 8, 512 tokens. The ordinary variant runs the same
   blocks as plain residual code (`ReversibleStack(reversible=False)`), autodiff storing
   every layer's activations.
4. axial vs standard position table: the crime-and-punishment model with its 320-piece
   vocabulary; parameter counts (the blog's 2,584,064 vs 136,572,416 are without the LM
   head), checked against Hugging Face's ReformerModel, and inference memory at batch 8,
   512 tokens.

  python -m experiments.blog_tables
  python -m experiments.blog_tables --tables axial,reversible
  python -m experiments.blog_tables --quick --out /tmp/q      # tiny smoke run
"""
import argparse
import os
import pathlib
import sys
import time
from typing import Any, Dict, Optional

if __package__ in (None, ""):
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from experiments import common  # noqa: E402  pylint: disable=wrong-import-position

TABLES = ("attention", "chunked_ff", "reversible", "axial")

# The blog's numbers (PyTorch, one 11 GB GPU, MB): see /work/shared/REFERENCE.md.
BLOG = {
    "attention": {"lengths": [2048, 4096, 8192, 16384],
                  "global_mb": [1465, 2757, 7893, None], "local_lsh_mb": [1785, 2621, 4281, 7607],
                  "note": "global OOM at 16384"},
    "chunked_ff": {"lengths": [1024, 2048, 4096], "unchunked_mb": [3743, 5539, 9087],
                   "chunked_mb": [2973, 3999, 6011]},
    "reversible": {"layers": [4, 8, 12], "bert_base_mb": [4103, 5759, 7415],
                   "reformer_mb": [4607, 4987, 5367]},
    "axial": {"params_standard": 136572416, "params_axial": 2584064,
              "standard_mb": 959, "axial_mb": 447},
}
# A tiny model standing in for enwik8 in --quick runs.
QUICK_ENWIK8 = {"d_model": 32, "d_ff": 64, "n_heads": 2, "d_head": 16, "n_layers": 2,
                "axial_shape": (16, 16), "axial_dims": (8, 24), "local_chunk_len": 8,
                "lsh_chunk_len": 8, "n_buckets": 8}


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--tables", default=",".join(TABLES))
  parser.add_argument("--ff_chunk", type=int, default=64,
                      help="positions per feed-forward chunk in table 2")
  parser.add_argument("--quick", action="store_true", help="tiny models and sizes")
  common.add_out_argument(parser)
  args = parser.parse_args(argv)
  unknown = set(args.tables.split(",")) - set(TABLES)
  if unknown:
    parser.error(f"unknown tables {sorted(unknown)}; choose from {TABLES}")
  return args


# ----------------------------------------------------------------------------------------
# The models and the functions whose memory is measured


def plain_residual_lm(config, reversible: bool):
  """ReformerLM's layout with `ReversibleStack(reversible=...)`: the same blocks, either
  reversible or as ordinary residual code (autodiff stores every layer's activations).

  Returns a flax module called as `(tokens [b, L], targets [b, L]) -> loss sums`.
  """
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from reformer_jax.layers.positional import AxialPositionalEmbedding  # pylint: disable=import-outside-toplevel
  from reformer_jax.layers.reversible import ReversibleStack  # pylint: disable=import-outside-toplevel
  from reformer_jax.models.loss import chunked_cross_entropy  # pylint: disable=import-outside-toplevel
  from reformer_jax.models.reformer_lm import AttentionBlock, FeedForwardBlock  # pylint: disable=import-outside-toplevel

  class ResidualLM(nn.Module):
    """embed + axial positions -> (x, x) -> layers -> concat -> LayerNorm -> loss."""

    @nn.compact
    def __call__(self, tokens, targets):
      cfg = config
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1])[None], tokens.shape)
      x = nn.Embed(cfg.vocab_size, cfg.d_model, name="token_embed")(tokens)
      x = nn.Dropout(cfg.dropout_rate)(x, deterministic=False)
      x = x + AxialPositionalEmbedding(cfg.resolved_axial_shape, cfg.resolved_axial_dims,
                                       cfg.d_model, name="positional")(positions)
      blocks = tuple((AttentionBlock(cfg, t, parent=None), FeedForwardBlock(cfg, parent=None))
                     for t in cfg.layer_attention_types())
      x1, x2 = ReversibleStack(blocks, reversible=reversible, name="encoder")(
          x, x, {"mask": None}, deterministic=False)
      h = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=cfg.dtype, name="final_norm")(
          jnp.concatenate([x1, x2], axis=-1))
      kernel = self.param("lm_head", nn.initializers.lecun_normal(),
                          (2 * cfg.d_model, cfg.vocab_size))
      loss, _, _ = chunked_cross_entropy(h, kernel, None, targets, None, cfg.loss_chunk_len)
      return loss

  return ResidualLM()


def _abstract_params(module, *args, rngs=("params", "hash")):
  import jax  # pylint: disable=import-outside-toplevel
  keys = {name: jax.random.PRNGKey(i) for i, name in enumerate(rngs)}
  return jax.eval_shape(lambda: module.init(keys, *args))["params"]


def _tokens(batch, length):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  return jax.ShapeDtypeStruct((batch, length), jnp.int32)


def _key():
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  return jax.ShapeDtypeStruct((2,), jnp.uint32)


def inference_memory(config, batch: int, length: int) -> Dict[str, Any]:
  """Compiled memory of `ReformerLM(config)` (deterministic) computing logits."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from reformer_jax.models import ReformerLM  # pylint: disable=import-outside-toplevel
  model = ReformerLM(config.replace(deterministic=True))
  params = _abstract_params(model, jnp.zeros((1, min(length, 128)), jnp.int32))

  def forward(params, tokens, key):
    return model.apply({"params": params}, tokens, rngs={"hash": key})

  return _timed(common.compile_memory, forward, params, _tokens(batch, length), _key(),
                params=common.param_count(params))


def training_memory(module, batch: int, length: int) -> Dict[str, Any]:
  """Compiled memory of the gradient (forward + backward) of `module`'s loss."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  small = jnp.zeros((1, min(length, 128)), jnp.int32)
  params = _abstract_params(module, small, small, rngs=("params", "hash", "dropout"))

  def grads(params, tokens, key):
    dropout, hashing = jax.random.split(key)
    return jax.grad(lambda p: module.apply({"params": p}, tokens, tokens,
                                           rngs={"dropout": dropout, "hash": hashing}))(params)

  return _timed(common.compile_memory, grads, params, _tokens(batch, length), _key(),
                params=common.param_count(params))


def _timed(fn, *args, params: Optional[int] = None):
  start = time.perf_counter()
  record = fn(*args)
  record["compile_s"] = time.perf_counter() - start
  if params is not None:
    record["params"] = params
  return record


def _mb(record):
  return record["peak_bytes"] / 1e6


# ----------------------------------------------------------------------------------------
# The tables


def global_attention_config(config):
  """`config` with local layers made full attention and LSH layers full shared-QK."""
  swap = {"local": "full", "lsh": "shared_qk_full"}
  return config.replace(attention_types=tuple(swap.get(t, t) for t in config.attention_types))


def table_attention(base, lengths):
  config, _ = common.enwik8(**{**base, "ff_chunk_size": None})
  rows = []
  for length in lengths:
    row = {"length": length, "batch": 1,
           "global": inference_memory(global_attention_config(config), 1, length),
           "local_lsh": inference_memory(config, 1, length)}
    rows.append(row)
    print(f"attention L={length:>6}: global {_mb(row['global']):9.0f} MB, local+LSH "
          f"{_mb(row['local_lsh']):8.0f} MB", flush=True)
  return {"model": "enwik8 (configs/enwik8.gin), inference, batch 1",
          "config": common.config_record(config), "rows": rows, "blog": BLOG["attention"]}


def table_chunked_ff(base, lengths, ff_chunk, batch):
  config, _ = common.enwik8(**dict({"n_heads": 2, "d_ff": 16384}, **base))
  rows = []
  for length in lengths:
    row = {"length": length, "batch": batch,
           "unchunked": inference_memory(config.replace(ff_chunk_size=None), batch, length),
           "chunked": inference_memory(config.replace(ff_chunk_size=ff_chunk), batch, length)}
    rows.append(row)
    print(f"chunked ff L={length:>5}: unchunked {_mb(row['unchunked']):7.0f} MB, chunked "
          f"{_mb(row['chunked']):7.0f} MB", flush=True)
  return {"model": f"enwik8 with 2 heads, d_ff {config.d_ff}, inference, batch {batch}, "
                   f"feed-forward chunks of {ff_chunk}",
          "config": common.config_record(config), "rows": rows, "blog": BLOG["chunked_ff"]}


def table_reversible(base, layer_counts, length, batch):
  rows = []
  for n_layers in layer_counts:
    config, _ = common.enwik8(**{**base, "n_layers": n_layers, "ff_chunk_size": None})
    row = {"n_layers": n_layers, "length": length, "batch": batch,
           "reversible": training_memory(plain_residual_lm(config, True), batch, length),
           "ordinary": training_memory(plain_residual_lm(config, False), batch, length)}
    rows.append(row)
    print(f"reversible {n_layers:>2} layers: ordinary {_mb(row['ordinary']):7.0f} MB, "
          f"reversible {_mb(row['reversible']):7.0f} MB", flush=True)
  for name in ("reversible", "ordinary"):
    if len(rows) >= 2:
      first, last = rows[0], rows[-1]
      per_layer = ((last[name]["peak_bytes"] - first[name]["peak_bytes"])
                   / (last["n_layers"] - first["n_layers"]))
      params_per_layer = ((last[name]["params"] - first[name]["params"])
                          / (last["n_layers"] - first["n_layers"]))
      for row in rows:
        row[name]["peak_bytes_per_layer"] = per_layer
        row[name]["activation_bytes_per_layer"] = per_layer - 2 * 4 * params_per_layer
  return {"model": f"enwik8 widths, training (forward + backward, no optimiser), batch "
                   f"{batch}, {length} tokens; activation_bytes_per_layer = peak growth per "
                   "layer minus its float32 parameters and gradients",
          "config": common.config_record(common.enwik8(**{**base, "ff_chunk_size": None})[0]),
          "rows": rows,
          "blog": BLOG["reversible"]}


def hf_param_counts():
  """Hugging Face ReformerModel parameter counts (standard vs axial), built on 'meta'."""
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  counts = {}
  for name, axial in (("standard", False), ("axial", True)):
    config = transformers.ReformerConfig(
        vocab_size=320, hidden_size=256, feed_forward_size=512, num_attention_heads=2,
        attention_head_size=64, attn_layers=["local", "lsh"] * 3, axial_pos_embds=axial,
        axial_pos_shape=[512, 1024], axial_pos_embds_dim=[64, 192],
        max_position_embeddings=524288, num_buckets=[64, 128], is_decoder=True)
    with torch.device("meta"):
      counts[name] = transformers.ReformerModel(config).num_parameters()
  return counts


def table_axial(base, batch, length, quick):
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from reformer_jax.models import ReformerLM  # pylint: disable=import-outside-toplevel
  full, _ = common.crime_and_punishment(vocab_size=320, ff_chunk_size=None)
  standard = full.replace(positional="learned", max_len=524288)
  counts = {}
  for name, config in (("axial", full), ("standard", standard)):
    params = _abstract_params(ReformerLM(config.replace(deterministic=True)),
                              jnp.zeros((1, 128), jnp.int32))
    head = common.param_count(params["lm_head"])
    counts[name] = {"with_lm_head": common.param_count(params),
                    "without_lm_head": common.param_count(params) - head}
  hf = hf_param_counts()
  check = {name: {"ours_without_lm_head": counts[name]["without_lm_head"],
                  "hugging_face_reformer_model": hf[name],
                  "blog": BLOG["axial"][f"params_{name}"],
                  "equal": counts[name]["without_lm_head"] == hf[name]
                           == BLOG["axial"][f"params_{name}"]}
           for name in ("axial", "standard")}
  print(f"axial params: {check}", flush=True)
  small, _ = common.crime_and_punishment(**{**base, "vocab_size": 320, "ff_chunk_size": None})
  small_standard = small.replace(positional="learned",
                                 max_len=2 ** 12 if quick else 524288)
  memory = {"axial": inference_memory(small, batch, length),
            "standard": inference_memory(small_standard, batch, length)}
  print(f"axial memory: standard {_mb(memory['standard']):.0f} MB, axial "
        f"{_mb(memory['axial']):.0f} MB", flush=True)
  return {"model": f"crime-and-punishment, vocab 320, inference, batch {batch}, {length} "
                   "tokens (standard table: 524,288 x 256)",
          "params": counts, "param_check": check, "memory": memory, "blog": BLOG["axial"]}


def plot(result, path):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  tables = result["tables"]
  fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))

  def bars(ax, labels, series, title, xlabel):
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
      ax.bar([x + i * width for x in range(len(labels))], values, width, label=name)
    ax.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(labels))])
    ax.set_xticklabels(labels)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("compiled peak (MB)")
    ax.legend(fontsize=7)

  if "attention" in tables:
    rows = tables["attention"]["rows"]
    bars(axes[0], [r["length"] for r in rows],
         {"global": [_mb(r["global"]) for r in rows],
          "local + LSH": [_mb(r["local_lsh"]) for r in rows]},
         "global vs local+LSH (inference)", "tokens")
    axes[0].set_yscale("log")
  if "chunked_ff" in tables:
    rows = tables["chunked_ff"]["rows"]
    bars(axes[1], [r["length"] for r in rows],
         {"unchunked": [_mb(r["unchunked"]) for r in rows],
          "chunked": [_mb(r["chunked"]) for r in rows]},
         "chunked feed-forward (inference)", "tokens")
  if "reversible" in tables:
    rows = tables["reversible"]["rows"]
    bars(axes[2], [r["n_layers"] for r in rows],
         {"ordinary residual": [_mb(r["ordinary"]) for r in rows],
          "reversible": [_mb(r["reversible"]) for r in rows]},
         "reversible layers (forward + backward)", "layers")
  if "axial" in tables:
    memory = tables["axial"]["memory"]
    bars(axes[3], ["512"], {"standard table": [_mb(memory["standard"])],
                            "axial": [_mb(memory["axial"])]},
         "axial positions (inference)", "tokens")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  common.configure_jax()
  chosen = args.tables.split(",")
  quick = args.quick
  enwik8_base = QUICK_ENWIK8 if quick else {}
  result = {"machine": common.machine_info(common.default_threads()), "quick": quick,
            "memory_definition": "XLA compiled memory analysis: argument + temp + output - "
                                 "alias bytes (parameters included), CPU",
            "tables": {}}
  if "attention" in chosen:
    result["tables"]["attention"] = table_attention(
        enwik8_base, [64] if quick else [2048, 4096, 8192, 16384])
  if "chunked_ff" in chosen:
    result["tables"]["chunked_ff"] = table_chunked_ff(
        dict(enwik8_base, d_ff=256) if quick else {}, [64] if quick else [1024, 2048, 4096],
        8 if quick else args.ff_chunk, 2 if quick else 8)
  if "reversible" in chosen:  # quick: local attention only, no dropout (fast to compile)
    result["tables"]["reversible"] = table_reversible(
        dict(enwik8_base, attention_types=("local",), dropout_rate=0., attention_dropout=0.)
        if quick else {}, [1, 2] if quick else [4, 8, 12], 64 if quick else 512,
        2 if quick else 8)
  if "axial" in chosen:
    result["tables"]["axial"] = table_axial(dict(common.QUICK_CHANGES, n_layers=2)
                                            if quick else {}, 2 if quick else 8,
                                            64 if quick else 512, quick)
  result["load_average_after"] = list(os.getloadavg())
  out = common.out_dir(args)
  common.write_json(out / "blog_tables.json", result)
  plot(result, out / "blog_tables.png")
  print(f"wrote {out / 'blog_tables.json'} and .png")
  return result


if __name__ == "__main__":
  main()
