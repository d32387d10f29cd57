r"""Parity table: reformer_jax versus Hugging Face transformers' PyTorch Reformer.

Each row builds a `transformers.ReformerModelWithLMHead` with random weights (HF's
initialisation plus N(0, 0.2^2) noise on every parameter, so attention is far from
uniform and `lm_head.bias` is nonzero), converts it with `reformer_jax.convert`, and runs
both on the same random batch on CPU, ours in float32; LSH rotations are replayed from
HF's `hash_seed`. Reported: the largest absolute difference of the final hidden states
and of the logits against HF in float64 (its exact arithmetic) and against HF in float32
(which adds its own rounding error when combining hash rounds; see
`reformer_jax.convert.compare_with_hf`), and for the gradient rows the largest relative
difference over all parameters of the gradients of a next-token loss, HF using its own
reversible backward pass (training mode, dropout 0). The last column is the smallest
relative gap between the two largest rotated values over all of HF's hash decisions:
below ~1e-6, float32 rounding can pick the other bucket, and the LSH outputs then
legitimately differ (the enwik8-layout row; with 8 buckets the margins are wide).

  python -m experiments.hf_parity            # writes experiments/results/hf_parity.{json,md}
  python -m experiments.hf_parity --quick    # the tiny rows only, to a temporary directory
"""
import argparse
import contextlib
import json
import os
import pathlib
import platform
import sys
import time

import numpy as np

if __package__ in (None, ""):
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402  pylint: disable=wrong-import-position
import torch  # noqa: E402  pylint: disable=wrong-import-position
import transformers  # noqa: E402  pylint: disable=wrong-import-position

from experiments import common  # noqa: E402  pylint: disable=wrong-import-position
from reformer_jax import convert  # noqa: E402  pylint: disable=wrong-import-position

HASH_SEED = 3
NOISE = 0.2
TINY = dict(vocab_size=40, hidden_size=16, attention_head_size=8, num_attention_heads=2,
            feed_forward_size=32, attn_layers=["local", "lsh"], axial_pos_embds=False,
            axial_pos_shape=[8, 8], axial_pos_embds_dim=[8, 8], max_position_embeddings=64,
            local_attn_chunk_length=8, lsh_attn_chunk_length=8, num_buckets=4)
# google/reformer-crime-and-punishment's architecture (random weights).
CRIME_AND_PUNISHMENT = dict(
    vocab_size=320, hidden_size=256, attention_head_size=64, num_attention_heads=2,
    feed_forward_size=512, attn_layers=["local", "lsh"] * 3, axial_pos_embds=True,
    axial_pos_shape=[512, 1024], axial_pos_embds_dim=[64, 192],
    max_position_embeddings=524288, local_attn_chunk_length=64, lsh_attn_chunk_length=64,
    num_buckets=[64, 128])
# google/reformer-enwik8's layer pattern, chunks, buckets and hashes at a quarter width.
ENWIK8_QUARTER = dict(
    vocab_size=258, hidden_size=256, attention_head_size=32, num_attention_heads=8,
    feed_forward_size=1024, attn_layers=["local", "local", "lsh", "local"] * 3,
    axial_pos_embds=True, axial_pos_shape=[128, 512], axial_pos_embds_dim=[64, 192],
    max_position_embeddings=65536, local_attn_chunk_length=128, lsh_attn_chunk_length=256,
    num_buckets=512, num_hashes=2)

# (name, base, overrides, length, padded batch, hf_padding)
OUTPUT_ROWS = [
    ("local only", TINY, dict(attn_layers=["local", "local"]), 30, False, False),
    ("LSH only, 1 round", TINY, dict(attn_layers=["lsh", "lsh"]), 32, False, False),
    ("LSH only, 3 rounds, buckets [2, 4]", TINY,
     dict(attn_layers=["lsh", "lsh"], num_hashes=3, num_buckets=[2, 4]), 32, False, False),
    ("mixed local/LSH/local, axial, chunks 16/8, 2 rounds", TINY,
     dict(attn_layers=["local", "lsh", "local"], axial_pos_embds=True,
          local_attn_chunk_length=16, num_hashes=2), 64, False, False),
    ("chunked feed-forward (8), gelu", TINY, dict(chunk_size_feed_forward=8, hidden_act="gelu"),
     32, False, False),
    ("padded batch (attention mask), 2 rounds", TINY, dict(num_hashes=2), 30, True, False),
    ("length 52, chunks 16/8: HF pads to 64, ours to 56", TINY,
     dict(local_attn_chunk_length=16, num_hashes=2), 52, False, False),
    ("same, input padded with convert.pad_like_hf", TINY,
     dict(local_attn_chunk_length=16, num_hashes=2), 52, False, True),
]
FULL_ROWS = [
    ("crime-and-punishment architecture", CRIME_AND_PUNISHMENT, {}, 2048, False, False),
    ("crime-and-punishment architecture, 4 rounds", CRIME_AND_PUNISHMENT, dict(num_hashes=4),
     2048, False, False),
    ("enwik8 layout at width 256", ENWIK8_QUARTER, {}, 2048, False, False),
    ("enwik8 layout at width 256, 8 buckets", ENWIK8_QUARTER, dict(num_buckets=8), 2048, False,
     False),
]
# (name, base, overrides, length)
GRADIENT_ROWS = [
    ("local/LSH, axial, 2 rounds", TINY,
     dict(attn_layers=["local", "lsh"], axial_pos_embds=True, num_hashes=2), 64),
    ("LSH only, 3 rounds, buckets [2, 4], axial", TINY,
     dict(attn_layers=["lsh", "lsh"], axial_pos_embds=True, num_hashes=3,
          num_buckets=[2, 4]), 64),
]


def hf_model(base, overrides, dtype):
  torch.manual_seed(0)
  config = transformers.ReformerConfig(
      **{**base, **overrides}, is_decoder=True, hidden_dropout_prob=0.0,
      local_attention_probs_dropout_prob=0.0, lsh_attention_probs_dropout_prob=0.0)
  model = transformers.ReformerModelWithLMHead(config)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(NOISE * torch.randn_like(p))
  return model.to(dtype)


def batch(vocab, length, padded):
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, vocab, (2, length))
  if not padded:
    return tokens, None
  mask = np.ones((2, length), np.int64)
  mask[1, length * 2 // 3:] = 0
  return tokens, mask


def describe(base, overrides):
  hf = {**convert.HF_DEFAULTS, **base, **overrides}
  return {"attn_layers": hf["attn_layers"], "hidden_size": hf["hidden_size"],
          "num_hashes": hf["num_hashes"], "num_buckets": hf["num_buckets"],
          "chunks (local, lsh)": [hf["local_attn_chunk_length"], hf["lsh_attn_chunk_length"]],
          "positions": "axial" if hf["axial_pos_embds"] else "learned"}


@contextlib.contextmanager
def hash_margins():
  """Records, for every hashing HF does, the smallest relative gap between the largest and
  second largest rotated value (float32 arithmetic can flip an argmax closer than ~1e-6)."""
  lsh = transformers.models.reformer.modeling_reformer.LSHSelfAttention
  original = lsh._hash_vectors
  margins = []

  def recording(self, vectors, num_hashes, attention_mask, increase_num_buckets=False):
    torch.manual_seed(self.hash_seed)
    shape = (self.num_attention_heads, vectors.shape[-1], num_hashes)
    factors = self.num_buckets if isinstance(self.num_buckets, list) else [self.num_buckets]
    rotated = torch.einsum("bmtd,mdhr->bmhtr", vectors.detach(),
                           torch.randn(shape + (sum(factors) // 2,), dtype=vectors.dtype))
    start = 0
    for factor in factors:
      part = rotated[..., start:start + factor // 2]
      start += factor // 2
      top = torch.topk(torch.cat([part, -part], -1), 2, dim=-1).values
      margins.append(float(((top[..., 0] - top[..., 1]) / top[..., 0].abs()).min()))
    return original(self, vectors, num_hashes, attention_mask, increase_num_buckets)

  lsh._hash_vectors = recording
  try:
    yield margins
  finally:
    lsh._hash_vectors = original


def output_row(name, base, overrides, length, padded, hf_padding):
  tokens, mask = batch(base["vocab_size"], length, padded)
  row = {"case": name, **describe(base, overrides), "length": length, "batch": 2,
         "padded": padded}
  for dtype in (torch.float64, torch.float32):
    model = hf_model(base, overrides, dtype)
    with hash_margins() as margins:
      result = convert.compare_with_hf(model, tokens, mask, hash_seed=HASH_SEED,
                                       hf_padding=hf_padding)
    suffix = str(dtype).replace("torch.", "")
    row[f"hidden_vs_hf_{suffix}"] = result["hidden"]
    row[f"logits_vs_hf_{suffix}"] = result["logits"]
    row["hf_adds_lm_head_bias"] = result["hf_adds_lm_head_bias"]
    if dtype == torch.float64:
      row["min_relative_hash_margin"] = min(margins) if margins else None
      with torch.no_grad():
        row["max_abs_logit"] = float(model.eval()(torch.as_tensor(tokens)).logits.abs().max())
  return row


def gradient_row(name, base, overrides, length):
  tokens, _ = batch(base["vocab_size"], length, False)
  row = {"case": name, **describe(base, overrides), "length": length, "batch": 2}
  for dtype in (torch.float64, torch.float32):
    result = convert.compare_gradients_with_hf(hf_model(base, overrides, dtype), tokens,
                                               hash_seed=HASH_SEED)
    suffix = str(dtype).replace("torch.", "")
    row[f"loss_difference_vs_hf_{suffix}"] = result.pop("loss")
    worst = max(result, key=result.get)
    row["parameters"] = len(result)
    row[f"max_relative_gradient_difference_vs_hf_{suffix}"] = result[worst]
    row[f"worst_parameter_vs_hf_{suffix}"] = worst
  return row


def markdown(report):
  lines = [f"transformers {report['versions']['transformers']}, torch "
           f"{report['versions']['torch']}, jax {report['versions']['jax']}; CPU; "
           "ours in float32.", "",
           "| case | length | max abs diff hidden (HF fp64) | max abs diff logits (HF fp64) "
           "| max abs logit | max abs diff logits (HF fp32) | min relative hash margin |",
           "|---|---|---|---|---|---|---|"]
  for r in report["outputs"]:
    margin = r["min_relative_hash_margin"]
    lines.append(f"| {r['case']} | {r['length']} | {r['hidden_vs_hf_float64']:.1e} | "
                 f"{r['logits_vs_hf_float64']:.1e} | {r['max_abs_logit']:.0f} | "
                 f"{r['logits_vs_hf_float32']:.1e} | "
                 f"{'-' if margin is None else f'{margin:.0e}'} |")
  lines += ["", "| gradients (HF's reversible backward) | length | parameters | max relative "
            "diff (HF fp64) | max relative diff (HF fp32) |", "|---|---|---|---|---|"]
  for r in report["gradients"]:
    lines.append(f"| {r['case']} | {r['length']} | {r['parameters']} | "
                 f"{r['max_relative_gradient_difference_vs_hf_float64']:.1e} | "
                 f"{r['max_relative_gradient_difference_vs_hf_float32']:.1e} |")
  return "\n".join(lines) + "\n"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny models only")
  common.add_out_argument(parser)
  args = parser.parse_args(argv)
  jax.config.update("jax_default_matmul_precision", "highest")
  transformers.logging.set_verbosity_error()
  start = time.time()
  rows = OUTPUT_ROWS + ([] if args.quick else FULL_ROWS)
  report = {
      "machine": common.machine_info(common.default_threads()), "quick": args.quick,
      "versions": {"transformers": transformers.__version__, "torch": torch.__version__,
                   "jax": jax.__version__, "python": platform.python_version()},
      "device": "cpu", "hash_seed": HASH_SEED, "weight_noise": NOISE,
      "outputs": [output_row(*row) for row in rows],
      "gradients": [gradient_row(*row) for row in GRADIENT_ROWS],
  }
  report["seconds"] = time.time() - start
  report["load_average_after"] = list(os.getloadavg())
  out = common.out_dir(args)
  out.mkdir(parents=True, exist_ok=True)
  (out / "hf_parity.json").write_text(json.dumps(report, indent=2) + "\n")
  table = markdown(report)
  (out / "hf_parity.md").write_text(table)
  print(table)
  print(json.dumps(report))


if __name__ == "__main__":
  main()
