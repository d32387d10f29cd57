"""End-to-end tests of `reformer_jax.train`, `.evaluate` and `.sample`.

Tiny shapes and a few steps on CPU. Training runs in-process through
`train.run`; the command lines, and the 8-device check (the device count is
fixed when JAX starts), run in subprocesses.
"""
import dataclasses
import json
import math
import os
import pathlib
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

import gin
import jax
import numpy as np
import pytest

from reformer_jax import evaluate, train
from reformer_jax.data import DuplicationTask, LMData
from reformer_jax.trainer import cli, gin_setup, sharding, steps
from reformer_jax.trainer.checkpointing import CheckpointMismatch

ROOT = pathlib.Path(__file__).resolve().parents[1]
QUICKSTART = ["configs/quickstart.gin"]
# The quickstart model shrunk: 2 layers (local, LSH) of width 32, length 32 (in chunks of 4:
# a slice of whole chunks on each of 8 devices under MeshConfig.sequence=8).
TINY = ["SEQ_LEN=32", "BATCH_SIZE=8", "D_MODEL=32", "N_LAYERS=2",
        "ReformerConfig.d_ff=64", "ReformerConfig.d_head=16",
        "ReformerConfig.lsh_chunk_len=4", "ReformerConfig.local_chunk_len=4",
        "Experiment.log_every=1", "Experiment.eval_every=100",
        "Experiment.eval_batches=1", "Experiment.checkpoint_every=2",
        "Experiment.keep_checkpoints=5", "Experiment.sample_length=0"]
# One local-attention layer: the cheapest model to compile.
LOCAL = ["N_LAYERS=1", "ReformerConfig.attention_types=('local',)"]
MACROS = ("SEQ_LEN", "BATCH_SIZE", "N_LAYERS", "D_MODEL", "N_HASHES", "TRAIN_STEPS")


@pytest.fixture(scope="module")
def subprocess_env(tmp_path_factory):
  """CPU, and a compilation cache the command-line runs share."""
  return dict(os.environ, JAX_PLATFORMS="cpu",
              JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")))


def _cli(env, module, *args):
  return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=300)


def _bindings(bindings):
  return [f"--gin_bindings={b}" for b in bindings]


def _last_json(stdout):
  return json.loads(stdout.strip().splitlines()[-1])


def _logged(workdir, split="train", key="loss"):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return {r["step"]: r[key] for r in rows if r["split"] == split}


def _event_tags(workdir):
  """Scalar tags of the TensorBoard event files (TFRecord framing, read by hand)."""
  from tensorboardX.proto import event_pb2
  tags = set()
  for name in os.listdir(workdir):
    if not name.startswith("events.out.tfevents"):
      continue
    with open(os.path.join(workdir, name), "rb") as f:
      data = f.read()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      record = data[offset + 12:offset + 12 + length]
      offset += 12 + length + 4
      tags.update(v.tag for v in event_pb2.Event.FromString(record).summary.value)
  return tags


# 1, 7, 8: the command line, its files, metrics, progress bar and JSON line.
@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, subprocess_env):
  """The reference run: 4 steps of TINY from the command line.

  Returns:
    (workdir, process, gin files, bindings) — the files and bindings rerun it
    in-process.
  """
  workdir = tmp_path_factory.mktemp("cli")
  override = workdir.parent / "override.gin"
  override.write_text("TRAIN_STEPS = 4\n")
  files = QUICKSTART + [str(override)]
  proc = _cli(subprocess_env, "reformer_jax.train",
              *[f"--gin_file={f}" for f in files],
              *_bindings(TINY), "--gin_bindings=Experiment.sample_length=8",
              f"--workdir={workdir}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, proc, files, TINY


def test_cli_trains_and_ends_with_a_json_line(cli_run):
  workdir, proc, _, _ = cli_run
  summary = _last_json(proc.stdout)
  assert summary["step"] == 4      # the second --gin_file overrode TRAIN_STEPS
  for key in ("train_loss", "eval_loss", "eval_accuracy", "eval_bits_per_byte",
              "tokens_per_second"):
    assert math.isfinite(summary[key]), key
  assert summary["eval_bits_per_byte"] == pytest.approx(
      summary["eval_loss"] / math.log(2))
  assert summary["tokens_per_second"] > 0
  assert "unigram entropy of the training split" in proc.stdout
  assert "HAMLET:" in proc.stdout.split("sample (8 tokens")[1]


def test_cli_writes_config_metrics_events_and_a_progress_bar(cli_run):
  workdir, proc, _, _ = cli_run
  config = (workdir / "config.gin").read_text()
  assert "SEQ_LEN = 32" in config and "TRAIN_STEPS = 4" in config
  assert "Experiment.seq_len = %SEQ_LEN" in config
  assert sorted(_logged(workdir)) == [1, 2, 3, 4]
  assert sorted(_logged(workdir, "eval")) == [4]
  assert {"train/loss", "train/accuracy", "train/bits_per_byte",
          "train/learning_rate", "train/steps_per_second",
          "train/tokens_per_second", "eval/loss", "eval/accuracy",
          "eval/bits_per_byte"} <= _event_tags(workdir)
  assert "[train] step 4: loss" in proc.stdout
  assert re.search(r"4/4 \[\d\d:\d\d<\d\d:\d\d", proc.stderr)   # tqdm: elapsed<ETA
  assert os.path.isdir(workdir / "checkpoints" / "4")


# 9: evaluate and sample from the checkpoint.
def test_evaluate_reproduces_the_final_eval_and_takes_bindings(cli_run, subprocess_env):
  workdir, proc, _, _ = cli_run
  metrics = evaluate.evaluate(str(workdir))
  assert metrics["step"] == 4 and metrics["n_hashes"] == 2
  assert metrics["eval_loss"] == pytest.approx(_last_json(proc.stdout)["eval_loss"],
                                               rel=1e-5)
  more = _cli(subprocess_env, "reformer_jax.evaluate", f"--workdir={workdir}",
              "--gin_bindings=N_HASHES=4")
  assert more.returncode == 0, more.stderr[-3000:]
  metrics = _last_json(more.stdout)
  assert metrics["n_hashes"] == 4 and math.isfinite(metrics["eval_loss"])


def test_sample_cli_reproduces_the_end_of_training_sample(cli_run, subprocess_env):
  workdir, trained, _, _ = cli_run
  proc = _cli(subprocess_env, "reformer_jax.sample", f"--workdir={workdir}",
              "--prompt=HAMLET:\n", "--length=8")
  assert proc.returncode == 0, proc.stderr[-3000:]
  text = proc.stdout[:-1]    # print's newline
  assert text.startswith("HAMLET:\n") and len(text) > len("HAMLET:\n")
  assert text in trained.stdout.split("sample (8 tokens after the prompt):\n")[1]


# 2: the configs and their macros.
@pytest.mark.parametrize("name", ["quickstart", "crime_and_punishment",
                                  "enwik8", "duplication"])
def test_config_exposes_the_macros(name):
  gin_setup.parse([f"{name}.gin"])
  exp = gin_setup.make_experiment()
  values = {m: gin_setup.gin.query_parameter(f"%{m}") for m in MACROS}
  assert (exp.seq_len, exp.batch_size, exp.train_steps) == (
      values["SEQ_LEN"], values["BATCH_SIZE"], values["TRAIN_STEPS"])
  assert (exp.model.n_layers, exp.model.d_model, exp.model.n_hashes) == (
      values["N_LAYERS"], values["D_MODEL"], values["N_HASHES"])
  gin_setup.parse([f"{name}.gin"], ["N_LAYERS=1", "N_HASHES=3"])
  exp = gin_setup.make_experiment()
  assert (exp.model.n_layers, exp.model.n_hashes) == (1, 3)


def test_crime_and_punishment_is_the_524288_token_model():
  gin_setup.parse(["crime_and_punishment.gin"], ["ReformerConfig.vocab_size=320"])
  exp = gin_setup.make_experiment()
  m = exp.model
  assert exp.seq_len == 524288 == math.prod(m.axial_shape) and exp.batch_size == 1
  assert (m.n_layers, m.d_model, m.d_ff, m.n_heads, m.d_head) == (6, 256, 512, 2, 64)
  assert m.layer_attention_types() == ("local", "lsh") * 3
  assert (m.axial_shape, m.axial_dims, m.n_buckets) == ((512, 1024), (64, 192), (64, 128))
  assert (m.lsh_chunk_len, m.local_chunk_len, m.n_hashes) == (64, 64, 1)
  assert (exp.optimizer.learning_rate, exp.optimizer.warmup_steps) == (1e-3, 500)
  params = steps.abstract_params(m, exp.seq_len, sharding.make_mesh())
  n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  head = 2 * 256 * 320 + 320
  assert n_params - head == 2584064     # the published count (no LM head)


def test_enwik8_and_duplication_are_the_papers_models():
  gin_setup.parse(["enwik8.gin"])
  m = gin_setup.make_experiment().model
  assert (m.n_layers, m.d_model, m.d_ff, m.n_heads) == (12, 1024, 4096, 8)
  assert m.layer_attention_types()[:4] == ("local", "local", "lsh", "local")
  assert (m.local_chunk_len, m.lsh_chunk_len, m.n_buckets, m.n_hashes,
          m.dropout_rate) == (128, 256, 512, 2, 0.2)
  gin_setup.parse(["duplication.gin"])
  exp = gin_setup.make_experiment()
  m = exp.model
  assert (m.n_layers, m.d_model, m.d_ff, m.n_heads, exp.seq_len) == (1, 256, 256, 4, 1024)
  assert m.attention_types == ("lsh",)
  data = exp.make_data()
  assert isinstance(data, DuplicationTask) and data.n_symbols == 511


# 3: data is gin-selectable and its order a function of (seed, step).
def test_data_source_is_selectable_by_binding(tmp_path):
  text = tmp_path / "mine.txt"
  text.write_bytes(bytes(range(256)) * 40)
  gin_setup.parse(QUICKSTART, ["Experiment.data=@local_file",
                               f"local_file.path='{text}'", "local_file.seed=5"])
  data = gin_setup.make_experiment().make_data()
  assert isinstance(data, LMData) and data.seed == 5
  np.testing.assert_array_equal(data.train_batch(7, 2, 16)["inputs"],
                                data.train_batch(7, 2, 16)["inputs"])


# 6: resume equals an uninterrupted run, also after a save killed midway.
def test_resume_after_an_interrupted_save_matches_an_uninterrupted_run(
    cli_run, tmp_path, capsys):
  workdir, proc, files, bindings = cli_run
  # Turn a copy into a run killed while saving step 4: orbax's temporary
  # directory of step 4 and a half-copied step 3, no finished step 4,
  # metrics up to step 2.
  killed = tmp_path / "killed"
  shutil.copytree(workdir, killed)
  checkpoints = killed / "checkpoints"
  shutil.rmtree(checkpoints / "4")
  (checkpoints / "4.orbax-checkpoint-tmp-1700000000" / "params").mkdir(parents=True)
  (checkpoints / "3" / "params").mkdir(parents=True)
  capsys.readouterr()
  resumed = train.run(files, bindings, str(killed))
  out = capsys.readouterr().out
  assert "checkpoint step 3" in out and "incomplete" in out
  assert "resuming from the checkpoint at step 2" in out
  assert (checkpoints / "3.unreadable").is_dir()        # moved aside, not deleted
  assert not (checkpoints / "4.orbax-checkpoint-tmp-1700000000").exists()  # cleaned up
  want, got = _logged(workdir), _logged(killed)
  assert sorted(got) == [1, 2, 3, 4]
  for step in (3, 4):
    assert got[step] == pytest.approx(want[step], abs=1e-6), step
  # The killed run's lines after step 2 were superseded, not repeated.
  rows = [json.loads(l) for l in (killed / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3, 4]
  old = [json.loads(l) for l in (killed / "metrics_superseded.jsonl").read_text().splitlines()]
  assert sorted({r["step"] for r in old}) == [3, 4]
  assert resumed["eval_loss"] == pytest.approx(_last_json(proc.stdout)["eval_loss"],
                                               abs=1e-6)


def test_rerun_after_the_last_step_evaluates_again_and_keeps_one_eval_line(
    cli_run, tmp_path, capsys):
  workdir, _, files, bindings = cli_run
  copy = tmp_path / "copy"
  shutil.copytree(workdir, copy)
  before = _logged(copy, "eval")
  train.run(files, bindings, str(copy))
  assert "already trained to step 4 (TRAIN_STEPS=4); evaluating only" in capsys.readouterr().out
  rows = [json.loads(l) for l in (copy / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if r["split"] == "eval"] == [4]
  assert _logged(copy, "eval") == pytest.approx(before, abs=1e-6)  # the same parameters
  old = [json.loads(l) for l in (copy / "metrics_superseded.jsonl").read_text().splitlines()]
  assert [(r["step"], r["split"]) for r in old] == [(4, "eval")]


def test_resuming_with_another_model_is_an_error_that_changes_nothing(cli_run, tmp_path):
  workdir, _, files, bindings = cli_run
  copy = tmp_path / "copy"
  shutil.copytree(workdir, copy)
  before = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
  train.run(files, bindings + ["D_MODEL=48"], str(copy), dry_run=True)  # writes nothing
  with pytest.raises(CheckpointMismatch, match="does not fit this config") as info:
    train.run(files, bindings + ["D_MODEL=48", "TRAIN_STEPS=6"], str(copy))
  assert re.search(r"params\.\S+: checkpoint \[\d+(, \d+)*\] float32, config", str(info.value))
  with pytest.raises(CheckpointMismatch, match="optimiser"):
    train.run(files, bindings + ["OptimizerConfig.clip_norm=None", "TRAIN_STEPS=6"],
              str(copy))
  after = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
  assert after == before


def test_init_from_starts_a_new_run_from_another_runs_parameters(cli_run, tmp_path, capsys):
  """A curriculum's next stage: `Experiment.init_from` starts at step 0 from the source's
  latest parameters (a learning rate of 1e-20 leaves them as they were, so the evaluation
  is the source's final one); a source without checkpoints or of another model is refused
  before anything is written."""
  workdir, proc, files, bindings = cli_run
  start = [f"Experiment.init_from='{workdir}'"]
  refused = tmp_path / "refused"
  with pytest.raises(CheckpointMismatch, match=r"(?s)params\.\S+: checkpoint .*"
                                                r"Experiment\.init_from=.* holds another model"):
    train.run(files, bindings + start + ["D_MODEL=48"], str(refused))
  with pytest.raises(FileNotFoundError, match="holds no checkpoints/"):
    train.run(files, bindings + [f"Experiment.init_from='{tmp_path}'"], str(refused))
  assert not refused.exists()
  capsys.readouterr()
  summary = train.run(files, bindings + start + ["TRAIN_STEPS=1",
                                                 "OptimizerConfig.learning_rate=1e-20"],
                      str(tmp_path / "next"))
  assert (f"starting at step 0 from the parameters of {workdir} (its step 4)"
          in capsys.readouterr().out)
  assert summary["step"] == 1
  assert summary["eval_loss"] == pytest.approx(_last_json(proc.stdout)["eval_loss"], abs=1e-6)


# 8: dry run.
def test_dry_run_compiles_without_training(tmp_path):
  report = train.run(QUICKSTART, TINY + LOCAL, str(tmp_path), dry_run=True)
  params = steps.abstract_params(gin_setup.make_experiment().model, 32,
                                 sharding.make_mesh())
  assert report["params"] == sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  assert report["peak_bytes"] > 4 * report["params"]     # at least the params
  assert report["flops_per_step"] > 0
  assert report["mesh"] == "data=1 x fsdp=1 x sequence=1 x tensor=1 (1 cpu device, 1 process)"
  assert report["state_bytes_per_device"] >= 12 * report["params"]   # params + Adam moments
  assert not (tmp_path / "checkpoints").exists()
  assert not (tmp_path / "config.gin").exists()        # a dry run writes nothing


# 5: 8 devices give the losses of 1.
_EIGHT_DEVICES = """
import json, sys
import gin
import jax
from reformer_jax import evaluate, train
assert jax.device_count() == 8, jax.devices()
files, bindings, workdir = json.loads(sys.argv[1])
train.run(files, bindings, workdir)
try:
  train.run(files, bindings + ["BATCH_SIZE=4"], workdir + "_bad")
except ValueError as e:
  print("error:", e)
"""


def test_eight_devices_give_the_losses_of_one(cli_run, tmp_path, subprocess_env):
  workdir, _, files, bindings = cli_run
  eight = str(tmp_path / "eight")
  proc = subprocess.run(
      [sys.executable, "-c", _EIGHT_DEVICES, json.dumps([files, bindings, eight])],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(subprocess_env,
               XLA_FLAGS=os.environ["XLA_FLAGS"] + " --xla_force_host_platform_device_count=8"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert ("BATCH_SIZE / grad_accum_steps=4 must be a multiple of MeshConfig.data x "
          "MeshConfig.fsdp = 8" in proc.stdout)
  one, eight = _logged(workdir), _logged(eight)
  assert sorted(eight) == [1, 2, 3, 4]
  for step in eight:
    assert eight[step] == pytest.approx(one[step], rel=1e-5, abs=1e-5)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _run_two_processes(files, bindings, workdir, env):
  """`reformer_jax.train --distributed` as 2 processes (of 1 CPU device unless `env` says): their
  outputs."""
  address = f"localhost:{_free_port()}"
  procs = [subprocess.Popen(
      [sys.executable, "-m", "reformer_jax.train", *[f"--gin_file={f}" for f in files],
       *_bindings(bindings), f"--workdir={workdir}", "--distributed",
       f"--coordinator_address={address}", "--num_processes=2", f"--process_id={i}"],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in (0, 1)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  return outs


def test_two_processes_of_four_devices_under_fsdp_give_the_losses_of_one_and_log_once(
    tmp_path, subprocess_env):
  """2 hosts x 4 CPU devices, parameters and Adam moments split 8 ways (fsdp=8): one
  process's losses, logged once; an unreadable checkpoint is moved aside by process 0, and
  the run resumed with each sequence split over the 8 devices of both hosts (sequence=8)
  trains on with the same losses. The one-layer model (LOCAL), 2 steps: LSH under
  sequence=8 is tests/parallel/test_sequence.py's."""
  bindings = TINY + LOCAL + ["TRAIN_STEPS=2", "Experiment.checkpoint_every=1"]
  train.run(QUICKSTART, bindings, str(tmp_path / "one"))
  shared = tmp_path / "two_hosts"
  env = dict(subprocess_env,
             XLA_FLAGS=os.environ["XLA_FLAGS"] + " --xla_force_host_platform_device_count=4")
  bindings = bindings + ["MeshConfig.data=1", "MeshConfig.fsdp=8"]
  (first, first_err), (second, second_err) = _run_two_processes(
      QUICKSTART, bindings, shared, env)
  assert "mesh: data=1 x fsdp=8 x sequence=1 x tensor=1 (8 cpu devices, 2 processes)" in first
  one, two = _logged(tmp_path / "one"), _logged(shared)
  assert sorted(two) == [1, 2]  # one line per step: only process 0 writes
  for step in two:
    assert two[step] == pytest.approx(one[step], rel=1e-5, abs=1e-5)
  timing = lambda record: {k: v for k, v in record.items() if k != "tokens_per_second"}
  assert timing(_last_json(second)) == timing(_last_json(first))
  for line in ("[train]", "[eval]", "starting at step 0", "unigram entropy"):
    assert line in first and line not in second  # process 1 logs nothing
  assert "train:" in first_err and "train:" not in second_err  # nor shows a progress bar
  assert (shared / "config.gin").is_file()
  # An unreadable last checkpoint: process 0 moves it aside, both resume from step 1.
  checkpoints = shared / "checkpoints"
  shutil.rmtree(checkpoints / "2" / "params")
  (checkpoints / "2" / "params").mkdir()
  (first, _), (second, _) = _run_two_processes(
      QUICKSTART, bindings + ["MeshConfig.fsdp=1", "MeshConfig.sequence=8"], shared, env)
  assert "mesh: data=1 x fsdp=1 x sequence=8 x tensor=1 (8 cpu devices, 2 processes)" in first
  assert "resuming from the checkpoint at step 1" in first
  assert sorted(os.listdir(checkpoints)) == ["1", "2", "2.unreadable"]
  assert _logged(shared) == pytest.approx(two, rel=1e-5, abs=1e-6)


def _start_two_processes(bindings, workdir, env):
  address = f"localhost:{_free_port()}"
  return [subprocess.Popen(
      [sys.executable, "-m", "reformer_jax.train", "--gin_file=configs/quickstart.gin",
       *_bindings(bindings), f"--workdir={workdir}", "--distributed",
       f"--coordinator_address={address}", "--num_processes=2", f"--process_id={i}"],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in (0, 1)]


def _when_trained(procs, workdir, lines):
  """Waits until process 0 logged `lines` metric lines."""
  deadline = time.monotonic() + 240
  metrics = workdir / "metrics.jsonl"
  while not (metrics.exists() and len(metrics.read_text().splitlines()) >= lines):
    assert all(p.poll() is None for p in procs) and time.monotonic() < deadline
    time.sleep(0.1)


def test_a_ctrl_c_or_kill_reaching_one_of_two_processes(tmp_path, subprocess_env):
  """Ctrl-C on process 1 alone: both stop after the same step and save it together. A
  SIGKILL of process 1: process 0 exits at once with one error line naming the checkpoint
  (it would otherwise wait for the lost process at JAX's shutdown barrier and abort)."""
  bindings = TINY + LOCAL + ["TRAIN_STEPS=100000", "Experiment.checkpoint_every=1000"]
  procs = _start_two_processes(bindings, tmp_path, subprocess_env)
  try:
    _when_trained(procs, tmp_path, 2)
    procs[1].send_signal(signal.SIGINT)
    outs = [p.communicate(timeout=120) for p in procs]
  finally:
    for p in procs:
      p.kill()
  assert [p.returncode for p in procs] == [130, 130], outs[0][1][-2000:] + outs[1][1][-2000:]
  step = int(re.search(r"resumes from the checkpoint at step (\d+)", outs[0][0]).group(1))
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [str(step)]

  procs = _start_two_processes(bindings, tmp_path, subprocess_env)
  try:
    _when_trained(procs, tmp_path, step + 2)        # resumed and trained on
    procs[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    _, err = procs[0].communicate(timeout=60)
    seconds = time.monotonic() - killed
  finally:
    for p in procs:
      p.kill()
  assert procs[0].returncode == 1 and seconds < 30, (seconds, err[-3000:])
  lines = [l for l in err.splitlines() if l.startswith("error")]
  assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
  assert re.match(r"error: process 0 of 2 stopped at step \d+: .*another process died or "
                  r"was killed .*resume from the checkpoint at step " + str(step), lines[0])


def test_process_flags_need_distributed(tmp_path, subprocess_env):
  proc = _cli(subprocess_env, "reformer_jax.train", "--gin_file=configs/quickstart.gin",
              f"--workdir={tmp_path}", "--num_processes=2")
  assert proc.returncode == 1
  assert "error: --num_processes only apply with --distributed." in proc.stderr


# 4: gradient accumulation and bf16 activations.
def test_gradient_accumulation_equals_one_big_batch(cli_run, tmp_path):
  workdir, _, files, bindings = cli_run
  train.run(files, bindings + ["Experiment.grad_accum_steps=2"], str(tmp_path))
  big, accumulated = _logged(workdir), _logged(tmp_path)
  assert accumulated[1] == pytest.approx(big[1], rel=1e-6)
  for step in (2, 3, 4):
    assert accumulated[step] == pytest.approx(big[step], rel=1e-5), step


def test_bfloat16_activations_train_at_a_length_that_needs_padding(tmp_path, capsys):
  summary = train.run(QUICKSTART, TINY + LOCAL + [
      "TRAIN_STEPS=2", "SEQ_LEN=34", "ReformerConfig.dtype='bfloat16'"], str(tmp_path))
  assert math.isfinite(summary["train_loss"]) and math.isfinite(summary["eval_loss"])
  assert "SEQ_LEN=34 is not a multiple of the chunk length; local attention pads " \
      "it to 36" in capsys.readouterr().out


# 10: a user's mistakes end in one clean line, before any training.
def test_cli_unknown_binding_prints_one_line_without_traceback(tmp_path, subprocess_env):
  proc = _cli(subprocess_env, "reformer_jax.train", "--gin_file=configs/quickstart.gin",
              "--gin_bindings=SEQ_LENN=64", f"--workdir={tmp_path}")
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith("error: unknown gin binding")
  assert "did you mean 'SEQ_LEN'?" in proc.stderr
  assert not (tmp_path / "config.gin").exists()


@pytest.mark.parametrize("files, bindings, message", [
    (["enwik8.gin"], ["DATA_PATH='/no/such/enwik8'"], "no file at '/no/such/enwik8'"),
    (["crime_and_punishment.gin"], ["SEQ_LEN=1048576"], "valid lengths are 1..524288"),
    (["quickstart.gin"], ["BATCH_SIZE=6", "Experiment.grad_accum_steps=4"],
     "BATCH_SIZE=6 must be a multiple of Experiment.grad_accum_steps=4"),
    (["quickstart.gin"], ["Experiment.eval_batches=0"],
     "Experiment.eval_batches must be a positive int or None, got 0"),
    (["quickstart.gin"], ["Experiment.sample_length=-5"],
     "Experiment.sample_length must be an int >= 0"),
    (["quickstart.gin"], ["Experiment.model=@ReformerConfig"],
     "bind it as @ReformerConfig() (with parentheses)"),
    (["quickstart.gin"], ["Experiment.data=@shipped_corpus()"],
     "bind it without parentheses"),
    (["quickstart.gin"], ["Experiment.seq_len=%SEQ_LENN"],
     "refers to %SEQ_LENN, which no file or binding defines (did you mean 'SEQ_LEN'?)"),
    (["quickstart.gin"], ["OptimizerConfig.learning_rate='x'"],
     "value of the wrong kind (in OptimizerConfig)"),
    (["duplication_small.gin"], ["Experiment.sample_length=8", "TRAIN_STEPS=1"],
     "DuplicationTask is not a text source"),
    # Checked against the data source before anything is written or compiled, in the
    # names the config uses (the macro a parameter is bound to, or the binding).
    (["duplication.gin"], ["SEQ_LEN=96"],
     "error: SEQ_LEN=96 does not fit the duplication task: its sequences `0 w 0 w` have "
     "length 2 * N_SYMBOLS + 2 = 1024 (N_SYMBOLS=511); set SEQ_LEN=1024 or N_SYMBOLS=47."),
    (["duplication_small.gin"], ["Experiment.eval_batches=None"],
     "Experiment.eval_batches=None scores a whole eval split, but the duplication task is "
     "unbounded"),
    (["quickstart.gin"], ["SEQ_LEN=-5"],
     "error: SEQ_LEN=-5: max_len must be None or an int >= 1 (not a bool or float), got -5 "
     "(ReformerConfig.max_len = %SEQ_LEN)."),
    (["quickstart.gin"], ["ReformerConfig.max_len=-5"], "error: ReformerConfig.max_len=-5: "),
    (["quickstart.gin"], ["D_MODEL=0"], "error: D_MODEL=0: d_model must be a positive int"),
    (["quickstart.gin"], ["Experiment.seq_len=-5"],
     "error: Experiment.seq_len must be a positive int, got -5."),
    (["quickstart.gin"], ["SEQ_LEN=20000"],
     "error: SEQ_LEN=20000 needs 20001 tokens per example, but the 'eval' split of "
     "shipped_corpus has 13987: use SEQ_LEN <= 13986"),
])
def test_user_errors_are_reported_cleanly(tmp_path, capsys, files, bindings, message):
  workdir = tmp_path / "run"
  with pytest.raises(SystemExit) as info:
    cli.guarded(lambda: train.run(files, bindings, str(workdir)))(["train"])
  assert info.value.code == 1
  err = capsys.readouterr().err
  assert err.startswith("error: ") and message in err
  assert len(err.strip().splitlines()) == 1       # one line: no progress bar before it
  assert "In call to configurable" not in err
  assert not workdir.exists()                     # nothing written


def test_a_local_file_or_tfds_split_shorter_than_seq_len_is_reported_first(tmp_path, capsys):
  from tests.data.test_tfds_source import _DOCS   # registers the tiny TFDS dataset
  text = tmp_path / "small.txt"
  text.write_bytes(b"x" * 1000)                   # split 0.9 / 0.05 / 0.05: 900 / 50 / 50
  tfds_dir = tmp_path / "tfds"
  cases = [
      (["enwik8.gin"], [f"DATA_PATH='{text}'", "SEQ_LEN=64"],
       "error: SEQ_LEN=64 needs 65 tokens per example, but the 'eval' split of local_file has "
       "50: use SEQ_LEN <= 49, or give that split more data."),
      (QUICKSTART, ["Experiment.data=@local_file", f"local_file.path='{text}'",
        "Experiment.seq_len=1000", "ReformerConfig.max_len=1024"],
       "error: Experiment.seq_len=1000 needs 1001 tokens per example, but the 'train' split "
       "of local_file has 900"),
      (QUICKSTART, ["Experiment.data=@tfds_text", "tfds_text.name='reformer_jax_tiny_text'",
        f"tfds_text.data_dir='{tfds_dir}'"],
       f"error: SEQ_LEN=128 needs 129 tokens per example, but the 'train' split of tfds_text "
       f"has {len(chr(10).join(_DOCS['train']).encode())}"),
  ]
  for files, bindings, message in cases:
    workdir = tmp_path / "run"
    with pytest.raises(SystemExit):
      cli.guarded(lambda: train.run(files, bindings, str(workdir)))(["train"])
    err = capsys.readouterr().err      # TFDS prints its preparation of the dataset first
    assert err.strip().splitlines()[-1].startswith(message), err
    assert err.count("error") == 1 and "train:" not in err   # no progress bar
    assert not workdir.exists()


def test_a_workdir_that_is_a_file_is_reported(tmp_path, capsys):
  path = tmp_path / "a_file"
  path.write_text("keep me")
  with pytest.raises(SystemExit):
    cli.guarded(lambda: train.run(QUICKSTART, [], str(path)))(["train"])
  assert "is a file; give a directory" in capsys.readouterr().err
  assert path.read_text() == "keep me"


def test_ctrl_c_during_a_save_still_saves_the_next_step(tmp_path, monkeypatch, capsys):
  """A Ctrl-C that lands inside the save of a step not due for a checkpoint: the
  loop stops after the next step and saves that one (it used to stop unsaved)."""
  original = train.checkpointing.Checkpointer.save

  def save_then_interrupt(self, state, *, force=False):
    saved = original(self, state, force=force)
    if int(state.step) == 2:
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(0.5)  # the handler runs here, inside the save
    return saved

  monkeypatch.setattr(train.checkpointing.Checkpointer, "save", save_then_interrupt)
  with pytest.raises(KeyboardInterrupt):
    train.run(QUICKSTART, TINY + LOCAL + ["TRAIN_STEPS=100", "Experiment.checkpoint_every=1000"],
              str(tmp_path))
  out = capsys.readouterr().out
  assert "stopping after this step" in out
  assert "interrupted at step 3; the same command resumes from the checkpoint at step 3" in out
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["3"]


def test_ctrl_c_saves_the_step_and_names_the_checkpoint(tmp_path, subprocess_env):
  args = [sys.executable, "-m", "reformer_jax.train", "--gin_file=configs/quickstart.gin",
          *_bindings(TINY + LOCAL + ["TRAIN_STEPS=100000", "Experiment.checkpoint_every=1000"]),
          f"--workdir={tmp_path}"]
  proc = subprocess.Popen(args, cwd=ROOT, env=subprocess_env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.monotonic() + 240
    metrics = tmp_path / "metrics.jsonl"
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
      assert proc.poll() is None and time.monotonic() < deadline
      time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
  finally:
    proc.kill()
  assert proc.returncode == 130, err[-2000:]
  assert "Traceback" not in err and "stopping after this step" in out
  step = int(re.search(r"resumes from the checkpoint at step (\d+)", out).group(1))
  assert step >= 2 and (tmp_path / "checkpoints" / str(step)).is_dir()
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [str(step)]


# Non-finite steps: skipped, counted, never saved; too many in a row stop the run.
def _finite_checkpoints(workdir):
  """{step: whether every saved parameter is finite}, read with orbax directly."""
  import orbax.checkpoint as ocp
  reader = ocp.StandardCheckpointer()
  found = {int(name): all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(
      reader.restore(workdir / "checkpoints" / name / "params")))
           for name in os.listdir(workdir / "checkpoints")}
  reader.close()
  return found


def test_an_absurd_learning_rate_stops_the_run_at_the_last_good_checkpoint(tmp_path, capsys):
  bindings = TINY + LOCAL + ["TRAIN_STEPS=60", "OptimizerConfig.learning_rate=1e4",
                             "OptimizerConfig.warmup_steps=1", "Experiment.checkpoint_every=1",
                             "Experiment.keep_checkpoints=3",
                             "Experiment.max_consecutive_nonfinite=3"]
  with pytest.raises(SystemExit) as info:
    cli.guarded(lambda: train.run(QUICKSTART, bindings, str(tmp_path)))(["train"])
  assert info.value.code == 1
  err = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error")]
  assert len(err) == 1, err   # one error line (the rest of stderr: the progress bar)
  match = re.match(r"error: step (\d+): 3 steps in a row \((\d+)\.\.\1\) had a non-finite loss "
                   r"or gradient and were skipped \(Experiment.max_consecutive_nonfinite=3\); "
                   r"stopped, the last good checkpoint is step (\d+) in (\S+)\. ", err[0])
  assert match, err[0]
  stop, first_skipped, latest = (int(match.group(i)) for i in (1, 2, 3))
  assert match.group(4) == str(tmp_path / "checkpoints") and latest < first_skipped
  saved = _finite_checkpoints(tmp_path)
  assert max(saved) == latest and all(saved.values())   # no step of the streak was saved
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  skipped = {r["step"] for r in rows if r.get("nonfinite_steps")}
  assert {first_skipped, stop - 1, stop} <= skipped and max(r["step"] for r in rows) == stop
  for step in skipped:   # a skipped step's loss is not averaged in: NaN when all skipped
    assert math.isnan(_logged(tmp_path)[step])


class _Poisoned:
  """A data source whose training batch `step` has NaN weights."""

  def __init__(self, data, step):
    self._data, self._step = data, step

  def __getattr__(self, name):
    return getattr(self._data, name)

  def train_batch(self, step, batch_size, seq_len):
    batch = self._data.train_batch(step, batch_size, seq_len)
    if step == self._step:
      batch = dict(batch, weights=np.full_like(batch["weights"], np.nan))
    return batch


def test_an_injected_nan_is_skipped_counted_and_not_saved(tmp_path):
  gin_setup.parse(QUICKSTART, TINY + LOCAL + ["TRAIN_STEPS=4", "Experiment.checkpoint_every=1"])
  exp = gin_setup.make_experiment()
  source = exp.data
  poisoned = dataclasses.replace(exp, data=lambda: _Poisoned(source(), step=2))  # the 3rd step
  summary = train.train_and_evaluate(poisoned, str(tmp_path))
  assert summary["nonfinite_steps"] == 1 and math.isfinite(summary["eval_loss"])
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["nonfinite_steps"] for r in rows if r["split"] == "train"] == [0, 0, 1, 0]
  assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [1, 2, 4]
  assert all(_finite_checkpoints(tmp_path).values())


# Tasks other than the causal LM (Experiment.task): a classifier of the user's own files
# (configs/text_classification.gin), a masked LM, ListOps configs; their bad input.
CLASSIFIER = ["SEQ_LEN=32", "BATCH_SIZE=4", "TRAIN_STEPS=2", "N_LAYERS=1", "D_MODEL=16",
              "ReformerConfig.d_ff=32", "ReformerConfig.d_head=8",
              "ReformerConfig.attention_types=('local',)", "ReformerConfig.local_chunk_len=16",
              "Experiment.log_every=1", "Experiment.checkpoint_every=2"]
_TEXTS = [("a fine day", 1), ("bad, bad, bad", 0), ("fine and sunny", 1), ("bad rain", 0),
          ("a sunny day", 1)]


def _text_files(folder, rows=_TEXTS):
  train_file, eval_file = folder / "train.jsonl", folder / "eval.csv"
  train_file.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
  eval_file.write_text("text,label\n" + "".join(f'"{t}",{y}\n' for t, y in rows[:3]))
  return [f"TRAIN_FILE='{train_file}'", f"EVAL_FILE='{eval_file}'"]


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory):
  """2 steps of a tiny classifier on two files the test writes: (workdir, summary)."""
  folder = tmp_path_factory.mktemp("classifier")
  workdir = folder / "run"
  summary = train.run(["text_classification.gin"], CLASSIFIER + _text_files(folder),
                      str(workdir))
  return workdir, summary


def test_a_classifier_trains_from_gin_and_logs_its_metrics(classifier_run):
  workdir, summary = classifier_run
  assert summary["task"] == "classification" and summary["step"] == 2
  assert summary["majority_class_accuracy"] == pytest.approx(2 / 3)
  for key in ("train_loss", "eval_loss", "eval_accuracy", "eval_macro_f1"):
    assert math.isfinite(summary[key]), key
  assert _logged(workdir, "eval", "macro_f1")[2] == summary["eval_macro_f1"]
  assert _logged(workdir, "eval", "accuracy")[2] == summary["eval_accuracy"]
  assert {"train/loss", "train/accuracy", "eval/accuracy", "eval/macro_f1"} <= \
      _event_tags(workdir)


def test_evaluate_writes_a_classifiers_predictions(classifier_run, tmp_path):
  workdir, summary = classifier_run
  path = tmp_path / "predictions.jsonl"
  metrics = evaluate.evaluate(str(workdir), predictions=str(path))
  assert metrics["task"] == "classification"
  assert metrics["eval_loss"] == pytest.approx(summary["eval_loss"], rel=1e-5)
  rows = [json.loads(line) for line in path.read_text().splitlines()]
  assert [r["label"] for r in rows] == [y for _, y in _TEXTS[:3]]    # the eval file's order
  for row in rows:
    assert row["predicted"] == int(np.argmax(row["logits"]))
    assert sum(row["probabilities"]) == pytest.approx(1.0)
  assert np.mean([r["predicted"] == r["label"] for r in rows]) == \
      pytest.approx(metrics["eval_accuracy"])


def test_a_classifier_workdir_is_refused_by_sample(classifier_run, subprocess_env):
  workdir, _ = classifier_run
  proc = _cli(subprocess_env, "reformer_jax.sample", f"--workdir={workdir}")
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines() == [
      f"error: this workdir is a classifier (Experiment.task = @Classification() in its "
      f"config.gin), not a causal language model: it cannot generate text. Score it with "
      f"`python -m reformer_jax.evaluate --workdir={workdir} --predictions=FILE`."]


def test_an_lm_checkpoint_evaluated_as_a_classifier_is_refused(cli_run, tmp_path, capsys):
  workdir, _, _, _ = cli_run
  path = tmp_path / "predictions.jsonl"
  with pytest.raises(SystemExit):
    cli.guarded(lambda: evaluate.evaluate(
        str(workdir), ["Experiment.task=@Classification()"], predictions=str(path)))(["x"])
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith(f"error: {workdir} holds a model trained with "
                                             "Experiment.task = @CausalLM()")
  assert "Drop the Experiment.task binding" in err[0]
  assert not path.exists()


@pytest.mark.parametrize("rows, message", [
    ([("a fine day", 1), ("bad", 5)], "train.jsonl:2: label 5 is outside [0, num_labels=2)"),
    ([("a fine day", 1), ("", 0)], "train.jsonl:2: the text is empty; drop the example"),
])
def test_bad_classification_data_is_one_error_before_anything_is_written(
    tmp_path, capsys, rows, message):
  workdir = tmp_path / "run"
  with pytest.raises(SystemExit):
    cli.guarded(lambda: train.run(["text_classification.gin"],
                                  CLASSIFIER + _text_files(tmp_path, rows),
                                  str(workdir)))(["train"])
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
  assert not workdir.exists()


def test_a_masked_lm_trains_and_evaluates(tmp_path):
  bindings = TINY + LOCAL + ["TRAIN_STEPS=2", "Experiment.task=@MaskedLM()",
                             "ReformerConfig.causal=False", "ReformerConfig.vocab_size=257"]
  summary = train.run(QUICKSTART, bindings, str(tmp_path))
  assert summary["task"] == "masked_lm"
  assert 0. <= summary["eval_masked_token_accuracy"] <= 1.
  assert _logged(tmp_path, "eval", "masked_token_accuracy")[2] == \
      summary["eval_masked_token_accuracy"]
  assert evaluate.evaluate(str(tmp_path))["eval_loss"] == pytest.approx(
      summary["eval_loss"], rel=1e-5)
  with pytest.raises(ValueError, match="reserve one: ReformerConfig.vocab_size = 257"):
    train.run(QUICKSTART, bindings[:-1], str(tmp_path / "bad"))


def test_listops_configs_are_lras_setting_and_the_small_study():
  from experiments import listops_small
  gin_setup.parse(["listops.gin"])
  exp = gin_setup.make_experiment()
  assert exp.seq_len == 2000 and exp.task.num_labels == 10 and not exp.model.causal
  assert (exp.model.n_layers, exp.model.d_model, exp.batch_size) == (6, 512, 32)
  gin_setup.parse(["listops_small.gin"])
  exp = gin_setup.make_experiment()
  settings = {k: gin.query_parameter(f"listops.{k}") for k in listops_small.DATA}
  assert settings == listops_small.DATA and exp.seq_len == listops_small.SEQ_LEN
  for key, value in listops_small.MODEL.items():
    assert getattr(exp.model, key) == value, key


def test_listops_dry_runs_at_length_2000(tmp_path):
  report = train.run(["listops.gin"], ["N_LAYERS=1", "D_MODEL=32", "ReformerConfig.d_ff=64",
                                       "ReformerConfig.n_heads=2", "ReformerConfig.d_head=16",
                                       "ReformerConfig.axial_dims=(8, 24)"],
                     str(tmp_path / "run"), dry_run=True)
  assert report["params"] > 0 and report["flops_per_step"] > 0
  assert not (tmp_path / "run").exists()


def test_a_classifier_workdir_exports_as_hfs_classification_class(classifier_run, tmp_path):
  transformers = pytest.importorskip("transformers")
  from reformer_jax import convert  # pylint: disable=import-outside-toplevel
  workdir, _ = classifier_run
  # HF's bidirectional local attention wraps around; a model trained without it is refused.
  with pytest.raises(ValueError, match="local_wrap=False"):
    convert.export_hf(str(workdir), str(tmp_path / "refused"))
  assert not (tmp_path / "refused").exists()
  workdir = tmp_path / "wrapped"
  train.run(["text_classification.gin"], CLASSIFIER + _text_files(tmp_path) + [
      "TRAIN_STEPS=1", "ReformerConfig.local_wrap=True"], str(workdir))
  hf_dir = str(tmp_path / "hf")
  assert convert.export_hf(str(workdir), hf_dir)["architecture"] == \
      "ReformerForSequenceClassification"
  hf_model, info = transformers.ReformerForSequenceClassification.from_pretrained(
      hf_dir, output_loading_info=True)
  assert hf_model.config.num_labels == 2
  assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
  _, _, params, _ = cli.load_workdir(str(workdir), ())
  _, back = convert.from_hf(hf_dir)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), back)


_QA = [("who met Bob?", "Ann met Bob.", "Ann"), ("who met Ann?", "Bob met Ann.", "Bob"),
       ("Ann ate?", "Ann ate a pear.", "a pear")]


def _qa_files(folder, rows=_QA):
  lines = "".join(json.dumps({"question": q, "context": c, "answer": a}) + "\n"
                  for q, c, a in rows)
  (folder / "qa.jsonl").write_text(lines)
  return [f"TRAIN_FILE='{folder / 'qa.jsonl'}'", f"EVAL_FILE='{folder / 'qa.jsonl'}'"]


def test_a_span_qa_model_trains_from_gin_and_writes_its_predictions(tmp_path):
  workdir = tmp_path / "run"
  summary = train.run(["span_qa.gin"], CLASSIFIER + _qa_files(tmp_path), str(workdir))
  assert summary["task"] == "span_qa" and summary["step"] == 2
  for key in ("train_loss", "eval_loss", "eval_exact_match", "eval_f1"):
    assert math.isfinite(summary[key]), key
  assert _logged(workdir, "eval", "f1")[2] == summary["eval_f1"]
  path = tmp_path / "spans.jsonl"
  metrics = evaluate.evaluate(str(workdir), predictions=str(path))
  rows = [json.loads(line) for line in path.read_text().splitlines()]
  assert [r["index"] for r in rows] == [0, 1, 2]
  assert [r["end"] - r["start"] + 1 for r in rows] == [len(a) for _, _, a in _QA]
  assert all(r["predicted_start"] <= r["predicted_end"] < 32 for r in rows)
  assert np.mean([r["exact_match"] for r in rows]) == pytest.approx(metrics["eval_exact_match"])


def test_a_span_qa_answer_beyond_seq_len_is_one_error_before_anything_is_written(
    tmp_path, capsys):
  workdir = tmp_path / "run"
  rows = _QA + [("where?", "x" * 40 + " here", "here")]
  with pytest.raises(SystemExit):
    cli.guarded(lambda: train.run(["span_qa.gin"], CLASSIFIER + _qa_files(tmp_path, rows),
                                  str(workdir)))(["train"])
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "qa.jsonl:4: the answer ends at input position 52" in err[0]
  assert "set SEQ_LEN >= 53" in err[0] and not workdir.exists()
