"""The `reformer_jax.sample` command line on a small written workdir (cached and not)."""
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer_jax import convert
from reformer_jax.models import ReformerConfig, ReformerLM

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = ReformerConfig(vocab_size=256, d_model=32, d_ff=64, n_heads=2, d_head=8, n_layers=2,
                        attention_types=("local", "lsh"), max_len=64, lsh_chunk_len=8,
                        local_chunk_len=8, n_hashes=2, dropout_rate=0., attention_dropout=0.)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A step-0 workdir of CONFIG with random parameters, and a file of two prompts."""
  root = tmp_path_factory.mktemp("sample")
  text = root / "text.txt"
  text.write_text("It was the best of times, it was the worst of times. " * 20)
  shapes = jax.eval_shape(ReformerLM(CONFIG).init, {"params": jax.random.PRNGKey(0),
                                                    "hash": jax.random.PRNGKey(1)},
                          jnp.zeros((1, 16), jnp.int32))["params"]
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), shapes)
  convert.write_workdir(CONFIG, params, str(root / "workdir"), seq_len=64,
                        data_file=str(text))
  prompts = root / "prompts.txt"
  prompts.write_text("It was\nthe worst of t\n")
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
             PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
  return root / "workdir", prompts, env


def _sample(env, workdir, *args):
  return subprocess.run([sys.executable, "-m", "reformer_jax.sample", f"--workdir={workdir}",
                         "--temperature=0", "--length=20", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def test_a_batch_from_a_file_is_the_same_with_and_without_the_cache(workdir):
  path, prompts, env = workdir
  cached = _sample(env, path, f"--prompts_file={prompts}")
  assert cached.returncode == 0, cached.stderr[-3000:]
  samples = cached.stdout[:-1].split("\n" + "-" * 40 + "\n")
  assert [s[:6] for s in samples] == ["It was", "the wo"]
  assert len(samples[0]) == len("It was") + 20
  assert "40 tokens for 2 prompt(s)" in cached.stderr and "tokens/s" in cached.stderr
  assert "MiB" in cached.stderr
  plain = _sample(env, path, f"--prompts_file={prompts}", "--no_cache")
  assert plain.returncode == 0, plain.stderr[-3000:]
  assert plain.stdout == cached.stdout and "no cache" in plain.stderr


def test_a_model_that_is_not_strictly_causal_falls_back_with_a_message(workdir):
  path, _, env = workdir
  proc = _sample(env, path, "--prompt=It", "--gin_bindings=ReformerConfig.strict_causal=False")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "not using the cache: this model's LSH attention is not strictly causal" in proc.stderr
  assert proc.stdout.startswith("It") and "no cache" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--top_p=0"], "top_p must be in (0, 1]"),
    (["--prompts_file=/dev/null"], "holds no prompt"),
])
def test_bad_input_exits_with_one_error_line(workdir, args, message):
  path, _, env = workdir
  proc = _sample(env, path, *args)
  assert proc.returncode == 1 and message in proc.stderr, proc.stderr[-3000:]


def test_past_the_position_table_it_slides_a_window_without_the_cache(workdir):
  path, _, env = workdir
  proc = _sample(env, path, "--prompt=a", "--length=100")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert ("not using the cache: 101 positions (prompt + new tokens) exceed the model's "
          "position table of 64") in proc.stderr
  assert len(proc.stdout) == 1 + 100 + 1


def test_dry_run_plans_the_generation_without_running_it(workdir):
  path, prompts, env = workdir
  proc = _sample(env, path, f"--prompts_file={prompts}", "--dry_run")
  assert proc.returncode == 0, proc.stderr[-3000:]
  (line,) = proc.stdout.strip().splitlines()   # one JSON line, no text
  record = json.loads(line)
  assert (record["step"], record["target"], record["batch_size"]) == ("sample", "cpu", 2)
  assert (record["prompt_len"], record["new_tokens"], record["use_cache"]) == (14, 20, True)
  assert record["cache_bytes"] > 0
  proc = _sample(env, path, "--target=v5e:1x1")
  assert proc.returncode == 1
  assert proc.stderr.strip() == ("error: --target=v5e:1x1 plans the generation for a TPU chip "
                                 "without running it; add --dry_run.")
