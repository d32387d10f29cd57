r"""Generation speed: reformer_jax with and without its cache versus Hugging Face `generate`.

Part 1 (side by side): one model of the quickstart's shape (2 layers local / LSH, d_model
128, 2 heads of 64, 2 hashing rounds, buckets (16, 16), axial positions for 16,384 tokens)
with random weights, written once as a Hugging Face directory (`convert.to_hf`). Each run
loads it in a fresh process pinned to `--threads` CPUs and generates `--new_tokens` greedy
tokens after the same random `--prompt_len`-token prompt:
  ours_cached    `generate_tokens(use_cache=True)`: prefill + one compiled loop of steps;
  ours_uncached  `generate_tokens(use_cache=False)`: the model re-run for every token;
  hf_cached      `ReformerModelWithLMHead.generate(use_cache=True)`;
  hf_uncached    the same with `use_cache=False`.
Ours runs the weights strictly causally (its default, `strict_causal=True`, which the cache
needs); HF runs its own chunk windows: the same weights and shapes, not the same tokens.
Times exclude compilation (reported apart); per-token latency against position comes from
a loop of single `decode_step` calls (ours) or `generate`'s streamer timestamps (HF). The
uncached paths are quadratic, so they stop at `--uncached_max` new tokens. `--rounds R`
repeats every measurement R times, alternating the order of the four.

Part 2 (long prompt): the crime-and-punishment model (configs/crime_and_punishment.gin,
random weights, dropout off) generates `--long_new` tokens after a `--long_prompt`-token
prompt with the cache: prefill time, per-token time, cache size and max RSS.

  python -m experiments.generation_speed
  python -m experiments.generation_speed --new_tokens 512,2048 --rounds 2
  python -m experiments.generation_speed --quick      # tiny smoke run
"""
import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time

if __package__ in (None, ""):
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from experiments import common  # noqa: E402  pylint: disable=wrong-import-position

FRAMEWORKS = ("ours_cached", "ours_uncached", "hf_cached", "hf_uncached")
TARGETS = {"cached_over_uncached_at_2048": 20.0, "hf_cached_per_token_over_ours": 2.0}
MODEL = dict(vocab_size=256, d_model=128, d_ff=256, n_heads=2, d_head=64, n_layers=2,
             attention_types=("local", "lsh"), positional="axial", max_len=16384, n_hashes=2,
             n_buckets=(16, 16), lsh_chunk_len=32, local_chunk_len=32, dropout_rate=0.,
             attention_dropout=0., lsh_attention_dropout=0.)
QUICK_MODEL = dict(MODEL, d_model=32, d_ff=64, d_head=16, max_len=256, n_buckets=(4, 4),
                   lsh_chunk_len=8, local_chunk_len=8)
LATENCY_BINS = 8


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--new_tokens", default=None,
                      help="comma-separated new-token counts (default 512,2048,8192)")
  parser.add_argument("--uncached_max", type=int, default=2048,
                      help="the uncached paths run only up to this many new tokens")
  parser.add_argument("--prompt_len", type=int, default=128)
  parser.add_argument("--rounds", type=int, default=1)
  parser.add_argument("--long_prompt", type=int, default=60000)
  parser.add_argument("--long_new", type=int, default=4096)
  parser.add_argument("--skip_long", action="store_true", help="skip part 2")
  parser.add_argument("--threads", type=int, default=min(2, common.default_threads()))
  parser.add_argument("--timeout", type=float, default=1800.)
  parser.add_argument("--quick", action="store_true", help="tiny model and lengths")
  common.add_out_argument(parser)
  args = parser.parse_args(argv)
  if args.rounds < 1:
    parser.error(f"--rounds must be at least 1, got {args.rounds}")
  if args.quick:
    args.uncached_max, args.prompt_len = 24, 12
    args.long_prompt, args.long_new = 200, 16
  if args.new_tokens is None:
    args.new_tokens = "8,24" if args.quick else "512,2048,8192"
  return args


def _prompt(length, vocab_size):
  import numpy as np  # pylint: disable=import-outside-toplevel
  return np.random.default_rng(0).integers(0, vocab_size, length).astype(np.int32)


def _latency_bins(times, first_position):
  """Median step time per bin of positions, `LATENCY_BINS` bins."""
  size = max(1, len(times) // LATENCY_BINS)
  return [{"first_position": first_position + i, "median_s": statistics.median(times[i:i + size])}
          for i in range(0, len(times) - size + 1, size)]


def ours_worker(spec):
  """Greedy generation with reformer_jax from `spec['hf_dir']` (or the crime-and-punishment
  model for `spec['long']`), cached or not; see the module docstring."""
  import functools  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  common.configure_jax()
  from reformer_jax import convert  # pylint: disable=import-outside-toplevel
  from reformer_jax.models import ReformerLM, decoding  # pylint: disable=import-outside-toplevel
  from reformer_jax.models.temperature_sampler import (  # pylint: disable=import-outside-toplevel
      Sampling, generate_tokens)
  if spec.get("long"):
    config, _ = common.crime_and_punishment(**spec["config"])
    config = config.replace(deterministic=True)
    params = jax.jit(ReformerLM(config).init)(
        {"params": jax.random.PRNGKey(0), "hash": jax.random.PRNGKey(1)},
        jnp.zeros((1, 16), jnp.int32))["params"]
  else:
    model, params = convert.from_hf(spec["hf_dir"])
    config = model.config.replace(strict_causal=True)
  prompt, new = _prompt(spec["prompt_len"], config.vocab_size), spec["new_tokens"]
  record = {"framework": spec["framework"], "prompt_len": len(prompt), "new_tokens": new,
            "threads": spec["threads"], "jax_version": jax.__version__}
  use_cache = spec["framework"] != "ours_uncached"
  run = generate_tokens(config, params, [prompt], new, sampling=Sampling(temperature=0.),
                        use_cache=use_cache)
  record.update(compile_s=run.compile_seconds, total_s=run.seconds,
                tokens_per_s=run.tokens_per_second, cache_bytes=run.cache_bytes,
                per_token_s=run.seconds / new)
  if use_cache:
    total = len(prompt) + new
    dconfig = decoding.decoding_config(config, total)
    rotations = decoding.draw_lsh_rotations(dconfig, 0)
    fill = jax.jit(functools.partial(decoding.prefill, dconfig, total_len=total))
    args = (params, jnp.asarray(prompt)[None], jnp.asarray([len(prompt)]))
    jax.block_until_ready(fill(*args, lsh_rotations=rotations))   # compile
    start = time.perf_counter()
    logits, cache = jax.block_until_ready(fill(*args, lsh_rotations=rotations))
    record["prefill_s"] = time.perf_counter() - start
    record["per_token_s"] = (run.seconds - record["prefill_s"]) / new
    if not spec.get("long"):
      # The cache is donated: an undonated call would copy all of it every step.
      step = jax.jit(functools.partial(decoding.decode_step, dconfig), donate_argnums=(3,))
      token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
      times = []
      for i in range(new):
        start = time.perf_counter()
        logits, cache = step(params, token, jnp.asarray([len(prompt) + i]), cache,
                             lsh_rotations=rotations)
        token = jax.block_until_ready(jnp.argmax(logits, axis=-1).astype(jnp.int32))
        times.append(time.perf_counter() - start)
      record["latency_vs_position"] = _latency_bins(times[1:], len(prompt) + 1)
  record["max_rss_bytes"] = common.max_rss_bytes()
  return record


def hf_worker(spec):
  """Greedy `ReformerModelWithLMHead.generate` from `spec['hf_dir']`, with or without its
  cache, timing each new token with a streamer. Imports neither JAX nor reformer_jax."""
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(spec["threads"])
  model = transformers.ReformerModelWithLMHead.from_pretrained(spec["hf_dir"]).eval()
  prompt, new = _prompt(spec["prompt_len"], model.config.vocab_size), spec["new_tokens"]
  stamps = []

  class Stamps(transformers.generation.streamers.BaseStreamer):
    def put(self, value):
      stamps.append(time.perf_counter())

    def end(self):
      pass

  inputs = torch.from_numpy(prompt.astype("int64"))[None]
  with torch.no_grad():
    start = time.perf_counter()
    model.generate(inputs, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                   use_cache=spec["framework"] == "hf_cached", streamer=Stamps(),
                   pad_token_id=0)
    total = time.perf_counter() - start
  times = [b - a for a, b in zip(stamps[1:], stamps[2:])]   # stamps[0]: the prompt
  return {"framework": spec["framework"], "prompt_len": len(prompt), "new_tokens": new,
          "threads": spec["threads"], "torch_threads": torch.get_num_threads(),
          "torch_version": torch.__version__, "transformers_version": transformers.__version__,
          "total_s": total, "tokens_per_s": new / total, "prefill_s": stamps[1] - start,
          "per_token_s": statistics.median(times) if times else None,
          "latency_vs_position": _latency_bins(times, len(prompt) + 1) if times else None,
          "jax_imported": "jax" in sys.modules, "max_rss_bytes": common.max_rss_bytes()}


def worker(spec):
  return hf_worker(spec) if spec["framework"].startswith("hf") else ours_worker(spec)


def _write_model(model_changes, hf_dir):
  """Random weights of the side-by-side model as a Hugging Face directory."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from reformer_jax import convert  # pylint: disable=import-outside-toplevel
  from reformer_jax.models import ReformerConfig, ReformerLM  # pylint: disable=import-outside-toplevel
  config = ReformerConfig(**model_changes, strict_causal=False, lm_head_bias=False,
                          deterministic=True)
  params = jax.jit(ReformerLM(config).init)(
      {"params": jax.random.PRNGKey(0), "hash": jax.random.PRNGKey(1)},
      jnp.zeros((1, 16), jnp.int32))["params"]
  convert.to_hf(config, params, hf_dir)
  return config


def _median(runs, key):
  values = [r[key] for r in runs if "error" not in r and r.get(key) is not None]
  return statistics.median(values) if values else None


def compare(runs, new_tokens):
  """Per new-token count: each framework's median tokens/s and per-token time, and ratios."""
  rows = []
  for n in new_tokens:
    row = {"new_tokens": n}
    for f in FRAMEWORKS:
      mine = [r for r in runs if r.get("framework") == f and r.get("new_tokens") == n]
      row[f"{f}_tokens_per_s"] = _median(mine, "tokens_per_s")
      row[f"{f}_per_token_ms"] = (None if _median(mine, "per_token_s") is None
                                  else 1e3 * _median(mine, "per_token_s"))
      row[f"{f}_max_rss_gib"] = common.gib(_median(mine, "max_rss_bytes"))
    ratio = lambda a, b: (row[a] / row[b]) if row[a] and row[b] else None
    row["ours_cached_over_uncached"] = ratio("ours_cached_tokens_per_s",
                                             "ours_uncached_tokens_per_s")
    row["hf_cached_per_token_over_ours"] = ratio("hf_cached_per_token_ms",
                                                 "ours_cached_per_token_ms")
    row["hf_cached_over_uncached"] = ratio("hf_cached_tokens_per_s", "hf_uncached_tokens_per_s")
    cached = [r for r in runs if r.get("framework") == "ours_cached" and r.get("new_tokens") == n
              and r.get("latency_vs_position")]
    if cached:
      bins = cached[0]["latency_vs_position"]
      row["ours_cached_last_over_first_latency_bin"] = bins[-1]["median_s"] / bins[0]["median_s"]
    rows.append(row)
  return rows


def _fmt(x, spec=".1f"):
  return "-" if x is None else format(x, spec)


def markdown(result):
  lines = ["# Generation speed (`python -m experiments.generation_speed`)", "",
           f"Command: `{result['command']}`; machine: {result['machine']['platform']}, "
           f"{result['machine']['threads']} threads per run, load average before "
           f"{result['machine']['load_average_1_5_15']} and after "
           f"{result['load_average_after']} (the CPU was shared with other jobs).", "",
           "Side by side (greedy, prompt of "
           f"{result['prompt_len']} tokens; times exclude compilation):", "",
           "| new tokens | ours cached tok/s | ours uncached tok/s | HF cached tok/s | "
           "HF uncached tok/s | ours cached ms/token | HF cached ms/token | cached / uncached "
           "(ours) | HF cached ms / ours | ours latency last / first bin |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for r in result["comparison"]:
    lines.append(
        f"| {r['new_tokens']} | {_fmt(r['ours_cached_tokens_per_s'])} | "
        f"{_fmt(r['ours_uncached_tokens_per_s'])} | {_fmt(r['hf_cached_tokens_per_s'])} | "
        f"{_fmt(r['hf_uncached_tokens_per_s'])} | {_fmt(r['ours_cached_per_token_ms'], '.2f')} | "
        f"{_fmt(r['hf_cached_per_token_ms'], '.2f')} | "
        f"{_fmt(r['ours_cached_over_uncached'])}x | "
        f"{_fmt(r['hf_cached_per_token_over_ours'], '.2f')}x | "
        f"{_fmt(r.get('ours_cached_last_over_first_latency_bin'), '.2f')} |")
  long = result.get("long")
  if long and "error" not in long:
    lines += ["", f"Crime-and-punishment model, {long['new_tokens']} tokens after a "
              f"{long['prompt_len']}-token prompt (cached): prefill {long['prefill_s']:.2f} s, "
              f"{1e3 * long['per_token_s']:.2f} ms per token ({long['tokens_per_s']:.0f} tokens/s "
              f"over prefill and steps), cache {long['cache_bytes'] / common.MiB:.0f} MiB, max "
              f"RSS {long['max_rss_bytes'] / common.GiB:.2f} GiB, compiling "
              f"{long['compile_s']:.1f} s."]
  elif long:
    lines += ["", f"Crime-and-punishment long-prompt run failed: {long['error']}"]
  return "\n".join(lines) + "\n"


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  common.configure_jax()
  new_tokens = [int(x) for x in args.new_tokens.split(",") if x.strip()]
  model = QUICK_MODEL if args.quick else MODEL
  result = {"machine": common.machine_info(args.threads), "quick": args.quick,
            "command": "python -m experiments.generation_speed " + " ".join(argv),
            "model": {k: list(v) if isinstance(v, tuple) else v for k, v in model.items()},
            "prompt_len": args.prompt_len, "rounds": args.rounds, "runs": []}
  with tempfile.TemporaryDirectory() as tmp:
    hf_dir = os.path.join(tmp, "hf")
    _write_model(model, hf_dir)
    for n in new_tokens:
      for round_ in range(args.rounds):
        order = FRAMEWORKS[::-1] if round_ % 2 else FRAMEWORKS
        for framework in order:
          if "uncached" in framework and n > args.uncached_max:
            continue
          spec = {"framework": framework, "hf_dir": hf_dir, "prompt_len": args.prompt_len,
                  "new_tokens": n}
          record = common.measure("generation_speed", spec, args.threads, args.timeout)
          record.update(framework=framework, new_tokens=n, round=round_)
          result["runs"].append(record)
          print(f"{framework:>13} {n:>5} new tokens: "
                + (record["error"] if "error" in record else
                   f"{record['tokens_per_s']:.1f} tokens/s, "
                   f"{1e3 * record['per_token_s']:.2f} ms/token"), flush=True)
  result["comparison"] = compare(result["runs"], new_tokens)
  if not args.skip_long:
    changes = dict(common.QUICK_CHANGES) if args.quick else {}
    changes.update(dropout_rate=0., attention_dropout=0.)
    spec = {"framework": "ours_cached", "long": True, "config": changes,
            "prompt_len": args.long_prompt, "new_tokens": args.long_new}
    result["long"] = common.measure("generation_speed", spec, args.threads, args.timeout)
    print(f"long prompt: {result['long']}", flush=True)
  two = [r for r in result["comparison"] if r["new_tokens"] == 2048]
  result["checks"] = {
      name: {"target": target, "value": two[0][key] if two else None,
             "pass": (two[0][key] >= target) if two and two[0][key] else None}
      for name, target, key in (
          ("cached_over_uncached_at_2048", TARGETS["cached_over_uncached_at_2048"],
           "ours_cached_over_uncached"),
          ("hf_cached_per_token_over_ours", TARGETS["hf_cached_per_token_over_ours"],
           "hf_cached_per_token_over_ours"))}
  result["load_average_after"] = list(os.getloadavg())
  out = common.out_dir(args)
  common.write_json(out / "generation_speed.json", result)
  (out / "generation_speed.md").write_text(markdown(result))
  print(markdown(result))
  print(f"wrote {out / 'generation_speed.json'} and .md")
  return result


if __name__ == "__main__":
  if not common.worker_main(sys.argv, worker):
    main()
