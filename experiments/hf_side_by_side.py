r"""Training-step time and memory: reformer_jax versus Hugging Face's PyTorch Reformer.

Both frameworks train the crime-and-punishment configuration (configs/crime_and_punishment.gin)
on the same random tokens, on the same CPUs with the same number of threads, each
measurement in a fresh subprocess: XLA's thread pool and torch's intra-op threads are
sized by pinning the process to `--threads` CPUs (plus `torch.set_num_threads`). A step is
forward + backward + gradient-norm clipping + Adam update; the time is the median of
`--steps` steps after `--warmup` untimed ones. Hugging Face's `ReformerModelWithLMHead`
gets the same settings (layers, widths, chunks, buckets, hashes, dropout, feed-forward
chunking, Adam with the same warmup learning rates step by step); its `hash_seed` is fixed,
and since it requires prod(axial_pos_shape) == length in training, the axial shape is set
to two powers of two per length, for both models (so their parameter counts are equal).
Our LSH layers use HF's causal windows (`strict_causal=False`) rather than our default
strictly causal ones, so both compute the same attention. Lengths are skipped once the next one is predicted
not to fit in the available memory.

A shared machine's speed drifts between runs, and the ratio of two runs taken minutes
apart with it. `--rounds R` measures each length R times, alternating which framework
goes first; the comparison is the ratio of the two medians over the rounds, with every
round's own ratio alongside (max RSS: the largest of the rounds).

  python -m experiments.hf_side_by_side                        # 2^11 .. 2^16 tokens
  python -m experiments.hf_side_by_side --lengths 16384 --steps 5 --rounds 3
  python -m experiments.hf_side_by_side --quick                 # tiny smoke run
"""
import argparse
import dataclasses
import os
import pathlib
import statistics
import sys

if __package__ in (None, ""):
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from experiments import common  # noqa: E402  pylint: disable=wrong-import-position

TARGET_SPEEDUP = 2.0   # HF step time / ours, at TARGET_LENGTH
TARGET_LENGTH = 16384
HASH_SEED = 0


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--lengths", default="2048,4096,8192,16384,32768,65536")
  parser.add_argument("--max_len", type=int, default=None, help="drop longer lengths")
  parser.add_argument("--steps", type=int, default=3, help="timed steps per run")
  parser.add_argument("--warmup", type=int, default=1, help="untimed steps per run")
  parser.add_argument("--rounds", type=int, default=1,
                      help="runs per framework and length, alternating which goes first")
  parser.add_argument("--threads", type=int, default=common.default_threads())
  parser.add_argument("--timeout", type=float, default=3600.)
  parser.add_argument("--quick", action="store_true", help="tiny model, one length")
  common.add_out_argument(parser)
  args = parser.parse_args(argv)
  if args.rounds < 1:
    parser.error(f"--rounds must be at least 1, got {args.rounds}")
  if args.quick:
    args.lengths, args.steps = "128", 1
  return args


def axial_shape(length: int):
  """Two powers of two (or the nearest factorisation) whose product is `length`."""
  bits = length.bit_length() - 1
  if 2 ** bits == length:
    return (2 ** (bits // 2), 2 ** (bits - bits // 2))
  first = max(d for d in range(1, int(length ** 0.5) + 1) if length % d == 0)
  return (first, length // first)


def hf_config(config, length: int):
  """transformers.ReformerConfig arguments equivalent to our `config` at `length`."""
  n_buckets = config.n_buckets
  return dict(
      vocab_size=config.vocab_size, hidden_size=config.d_model,
      feed_forward_size=config.d_ff, num_attention_heads=config.n_heads,
      attention_head_size=config.d_head, attn_layers=list(config.layer_attention_types()),
      is_decoder=config.causal, axial_pos_embds=True,
      axial_pos_shape=list(config.resolved_axial_shape),
      axial_pos_embds_dim=list(config.resolved_axial_dims), max_position_embeddings=length,
      num_hashes=config.n_hashes,
      num_buckets=list(n_buckets) if isinstance(n_buckets, tuple) else n_buckets,
      lsh_attn_chunk_length=config.lsh_chunk_len,
      lsh_num_chunks_before=config.lsh_n_chunks_before,
      lsh_num_chunks_after=config.lsh_n_chunks_after,
      local_attn_chunk_length=config.local_chunk_len,
      local_num_chunks_before=config.local_n_chunks_before,
      local_num_chunks_after=config.local_n_chunks_after,
      hidden_dropout_prob=config.dropout_rate,
      local_attention_probs_dropout_prob=config.attention_dropout,
      lsh_attention_probs_dropout_prob=config.lsh_attention_dropout,
      hidden_act=config.ff_activation, layer_norm_eps=config.layer_norm_eps,
      # HF needs the length to be a multiple of these chunk sizes.
      chunk_size_feed_forward=min(config.ff_chunk_size or 0, length),
      chunk_size_lm_head=min(config.loss_chunk_len, length), hash_seed=HASH_SEED,
      use_cache=False)


def hf_learning_rates(opt_config, n_steps: int):
  """Our schedule's learning rate for each of the first `n_steps` updates (as
  `common.build_train_step` builds the optimiser), for HF's Adam."""
  from reformer_jax.trainer import optim  # pylint: disable=import-outside-toplevel
  schedule = optim.make_schedule(opt_config, common.TRAIN_STEPS)
  return [float(schedule(i)) for i in range(n_steps)]


def hf_train_worker(spec):
  """Trains HF's ReformerModelWithLMHead for a few steps (see `common.jax_train_worker`).

  spec: {'hf_config': `hf_config(...)`, 'optimizer': Adam settings, 'learning_rates': one
  per step (ours, `hf_learning_rates`), 'length', 'batch', 'steps', 'warmup', 'threads'}. The process imports neither JAX nor reformer_jax, so its
  RSS is PyTorch's alone.
  """
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(spec["threads"])
  opt = spec["optimizer"]
  length, batch = spec["length"], spec.get("batch", 1)
  record = {"framework": "transformers", "length": length, "batch": batch,
            "threads": spec["threads"], "torch_threads": torch.get_num_threads(),
            "torch_version": torch.__version__, "transformers_version": transformers.__version__}
  torch.manual_seed(0)
  model = transformers.ReformerModelWithLMHead(transformers.ReformerConfig(**spec["hf_config"]))
  model.train()
  record["params"] = sum(p.numel() for p in model.parameters())
  optimizer = torch.optim.Adam(model.parameters(), lr=opt["learning_rate"],
                               betas=(opt["b1"], opt["b2"]), eps=opt["eps"])
  learning_rates = iter(spec["learning_rates"])
  vocab_size = spec["hf_config"]["vocab_size"]
  tokens = np.random.default_rng(0).integers(0, vocab_size, (batch, length + 1))
  inputs = torch.from_numpy(tokens[:, :-1].astype(np.int64))
  losses = []

  def step():
    for group in optimizer.param_groups:
      group["lr"] = next(learning_rates)
    optimizer.zero_grad(set_to_none=True)
    loss = model(input_ids=inputs, labels=inputs).loss
    loss.backward()
    if opt["clip_norm"] is not None:
      torch.nn.utils.clip_grad_norm_(model.parameters(), opt["clip_norm"])
    optimizer.step()
    losses.append(float(loss))

  record.update(common.timed_steps(step, spec.get("steps", 2), spec.get("warmup", 1)))
  record["losses"] = losses
  record["learning_rates"] = spec["learning_rates"]
  record["tokens_per_s"] = batch * length / record["step_time_s"]
  record["jax_imported"] = "jax" in sys.modules
  return record


def worker(spec):
  if spec["framework"] == "transformers":
    return hf_train_worker(spec)
  return common.jax_train_worker(spec)


def _available_bytes() -> int:
  with open("/proc/meminfo") as f:
    for line in f:
      if line.startswith("MemAvailable:"):
        return int(line.split()[1]) * 1024
  return 0


def _predicted_rss(runs, length):
  """Linear extrapolation of max RSS to `length` from the last two lengths that ran."""
  by_length = {}
  for r in runs:
    if "error" not in r:
      by_length[r["length"]] = max(by_length.get(r["length"], 0), r["max_rss_bytes"])
  if len(by_length) < 2:
    return None
  (l0, m0), (l1, m1) = sorted(by_length.items())[-2:]
  slope = (m1 - m0) / (l1 - l0) if l1 != l0 else 0.
  return m1 + slope * (length - l1)


def summarize(runs):
  """One framework's runs of one length (its rounds) as one record, None if any failed.

  Step time: the median over the rounds of each run's median step; memory: the largest.
  """
  if not runs or any("error" in r for r in runs):
    return None
  largest = lambda key: max(r[key] for r in runs)
  return {"length": runs[0]["length"], "rounds": len(runs),
          "step_time_s": statistics.median(r["step_time_s"] for r in runs),
          "max_rss_bytes": largest("max_rss_bytes"),
          "steps_max_rss_bytes": largest("steps_max_rss_bytes"),
          "step_transient_bytes": max(r["steps_max_rss_bytes"] - r["rss_before_timed_bytes"]
                                      for r in runs)}


def compare(ours_runs, hf_runs):
  """Ratios for one length from each side's rounds (None where a side failed).

  `speedup_hf_over_ours` is the ratio of the median step times; `speedup_per_round`
  pairs the runs of each round.
  """
  ours, hf = summarize(ours_runs), summarize(hf_runs)
  if ours is None or hf is None:
    return None
  ours_rounds, hf_rounds = ({r.get("round", 0): r for r in runs} for runs in (ours_runs, hf_runs))
  return {"length": ours["length"], "rounds": min(ours["rounds"], hf["rounds"]),
          "step_time_s_ours": ours["step_time_s"], "step_time_s_hf": hf["step_time_s"],
          "speedup_hf_over_ours": hf["step_time_s"] / ours["step_time_s"],
          "speedup_per_round": [hf_rounds[k]["step_time_s"] / o["step_time_s"]
                                for k, o in ours_rounds.items() if k in hf_rounds],
          "max_rss_ratio_ours_over_hf": ours["max_rss_bytes"] / hf["max_rss_bytes"],
          "steps_max_rss_ratio_ours_over_hf":
              ours["steps_max_rss_bytes"] / hf["steps_max_rss_bytes"],
          "step_transient_bytes_ours": ours["step_transient_bytes"],
          "step_transient_bytes_hf": hf["step_transient_bytes"]}


def plot(result, path):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
  for name, color in (("reformer_jax", "tab:blue"), ("transformers", "tab:red")):
    lengths = sorted({r["length"] for r in result["runs"] if r.get("framework") == name})
    runs = [summarize([r for r in result["runs"]
                       if r.get("framework") == name and r["length"] == length])
            for length in lengths]
    runs = [r for r in runs if r is not None]
    if not runs:
      continue
    lengths = [r["length"] for r in runs]
    ax_t.plot(lengths, [r["step_time_s"] for r in runs], "o-", color=color, label=name)
    ax_m.plot(lengths, [r["max_rss_bytes"] / common.GiB for r in runs], "o-", color=color,
              label=f"{name}: max RSS")
    ax_m.plot(lengths, [r["steps_max_rss_bytes"] / common.GiB for r in runs], "s--",
              color=color, mfc="none", label=f"{name}: max RSS of the timed steps")
  for ax, label in ((ax_t, "train step time (s)"), (ax_m, "GiB")):
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel(label)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
  threads = result["machine"]["threads"]
  fig.suptitle(f"crime-and-punishment train step, batch 1, CPU, {threads} threads each")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _run(framework, length, round_, changes, args, result, skipped):
  """One measurement in a fresh subprocess, appended to `result['runs']`."""
  runs = [r for r in result["runs"] if r.get("framework") == framework]
  predicted = _predicted_rss(runs, length)
  if predicted is not None and predicted > 0.85 * _available_bytes():
    print(f"skip {framework} at L={length}: predicted max RSS "
          f"{predicted / common.GiB:.1f} GiB does not fit", flush=True)
    result["runs"].append({"framework": framework, "length": length, "round": round_,
                           "error": "skipped: predicted not to fit in memory",
                           "predicted_max_rss_bytes": predicted})
    skipped.add(framework)
    return
  spec = {"framework": framework, "config": changes, "length": length,
          "steps": args.steps, "warmup": args.warmup}
  if framework == "transformers":
    config, opt_config = common.crime_and_punishment(**changes)
    spec["hf_config"] = hf_config(config, length)
    spec["optimizer"] = dataclasses.asdict(opt_config)
    spec["learning_rates"] = hf_learning_rates(opt_config, args.warmup + args.steps)
  record = common.measure("hf_side_by_side", spec, args.threads, args.timeout)
  record.setdefault("framework", framework)
  record.setdefault("length", length)
  record["round"] = round_
  result["runs"].append(record)
  if "error" in record:
    print(f"{framework:>12} L={length:>6}: {record['error']}", flush=True)
    if "killed" in record["error"] or "timed out" in record["error"]:
      skipped.add(framework)  # longer sequences will not fit either
  else:
    print(f"{framework:>12} L={length:>6} round {round_}: step {record['step_time_s']:.3f} s, "
          f"max RSS {record['max_rss_bytes'] / common.GiB:.3f} GiB (timed steps "
          f"{record['steps_max_rss_bytes'] / common.GiB:.3f}), params {record['params']}",
          flush=True)


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  common.configure_jax()
  base = dict(common.QUICK_CHANGES, n_layers=2) if args.quick else {}
  base["strict_causal"] = False  # HF's causal LSH windows
  lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
  if args.max_len:
    lengths = [n for n in lengths if n <= args.max_len]
  result = {"machine": common.machine_info(args.threads), "quick": args.quick,
            "thread_setting": (f"each run pinned to {args.threads} CPU(s) (XLA's pool size); "
                               f"torch.set_num_threads({args.threads})"),
            "config": common.config_record(common.crime_and_punishment(**base)[0]),
            "runs": [], "comparison": []}
  result["rounds"] = args.rounds
  skipped = set()
  for length in lengths:
    changes = dict(base, axial_shape=list(axial_shape(length)))
    for round_ in range(args.rounds):
      frameworks = ("reformer_jax", "transformers")
      for framework in frameworks[::-1] if round_ % 2 else frameworks:
        if framework not in skipped:
          _run(framework, length, round_, changes, args, result, skipped)
    per_side = [[r for r in result["runs"] if r["framework"] == f and r["length"] == length]
                for f in ("reformer_jax", "transformers")]
    ratios = compare(*per_side)
    if ratios:
      result["comparison"].append(ratios)
      rounds = ", ".join(f"{x:.2f}" for x in ratios["speedup_per_round"])
      print(f"  L={length}: HF / ours time {ratios['speedup_hf_over_ours']:.2f}x (rounds: "
            f"{rounds}), ours / HF max RSS {ratios['max_rss_ratio_ours_over_hf']:.2f}",
            flush=True)
  target = [c for c in result["comparison"] if c["length"] == TARGET_LENGTH]
  result["checks"] = {"speedup_at_16384": {
      "target": TARGET_SPEEDUP,
      "value": target[0]["speedup_hf_over_ours"] if target else None,
      "max_rss_ratio": target[0]["max_rss_ratio_ours_over_hf"] if target else None,
      "pass": (bool(target[0]["speedup_hf_over_ours"] >= TARGET_SPEEDUP
                    and target[0]["max_rss_ratio_ours_over_hf"] <= 1.0) if target else None)}}
  result["load_average_after"] = list(os.getloadavg())
  out = common.out_dir(args)
  common.write_json(out / "hf_side_by_side.json", result)
  plot(result, out / "hf_side_by_side.png")
  print(f"wrote {out / 'hf_side_by_side.json'} and .png")
  return result


if __name__ == "__main__":
  if not common.worker_main(sys.argv, worker):
    main()
