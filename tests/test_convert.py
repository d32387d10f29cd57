"""Parity with Hugging Face transformers' PyTorch Reformer, and checkpoint import / export.

Tiny `ReformerModelWithLMHead`s with random weights are converted and run on the same
batch (ours in float32); LSH rotations are replayed from HF's `hash_seed`. Final hidden
states and logits must agree within 1e-4 (max abs), gradients of a next-token loss within
1e-4 (relative, per parameter) under HF's own reversible backward pass. Compared against
the transformers version pinned in requirements-test.txt (5.23.0).

HF runs in float64 here: in float32 it combines hash rounds as exp(l - logsumexp(l)) with
l ~ -1e5 for a query that sees only itself in every round (position 0 always), where
float32 spacing is 0.0078, so its round weights sum to 1 +- ~1% there (about 4e-3 error in
these models' outputs; ours, a max-subtracted softmax, sums to 1). Single-round models
are also compared with float32 HF.
"""
import json
import os
import pathlib
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from reformer_jax import convert  # noqa: E402
from reformer_jax.models import ReformerConfig, ReformerLM  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
VOCAB = 40
TOL = 1e-4

# Small settings shared by every model: 2 heads of 8, d_model 16, chunks of 8, no dropout.
BASE = dict(vocab_size=VOCAB, hidden_size=16, attention_head_size=8, num_attention_heads=2,
            feed_forward_size=32, attn_layers=["local", "lsh"], axial_pos_embds=False,
            axial_pos_shape=[8, 8], axial_pos_embds_dim=[8, 8], max_position_embeddings=64,
            local_attn_chunk_length=8, lsh_attn_chunk_length=8, num_buckets=4, num_hashes=1,
            is_decoder=True, hidden_dropout_prob=0.0, local_attention_probs_dropout_prob=0.0,
            lsh_attention_probs_dropout_prob=0.0)

# name: (HF config overrides, length, padded batch)
CASES = {
    "local_only": (dict(attn_layers=["local", "local"]), 30, False),
    "lsh_one_round": (dict(attn_layers=["lsh", "lsh"]), 32, False),
    "lsh_rounds_factorised": (dict(attn_layers=["lsh", "lsh"], num_hashes=3,
                                   num_buckets=[2, 4]), 32, False),
    "mixed_axial": (dict(attn_layers=["local", "lsh", "local"], axial_pos_embds=True,
                         local_attn_chunk_length=16, num_hashes=2), 64, False),
    "chunked_feed_forward": (dict(chunk_size_feed_forward=8, hidden_act="gelu"), 32, False),
    "padded_batch": (dict(num_hashes=2), 30, True),
}


def hf_model(dtype=torch.float64, **overrides):
  """A ReformerModelWithLMHead with random weights of scale ~0.2 and a nonzero lm_head.bias."""
  torch.manual_seed(0)
  model = transformers.ReformerModelWithLMHead(transformers.ReformerConfig(**{**BASE,
                                                                              **overrides}))
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.2 * torch.randn_like(p))
  return model.to(dtype)


def batch(length, padded=False, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, VOCAB, (2, length))
  if not padded:
    return tokens, None
  mask = np.ones((2, length), np.int64)
  mask[1, length - 9:] = 0
  return tokens, mask


@pytest.mark.parametrize("name", sorted(CASES))
def test_outputs_match_transformers(name):
  overrides, length, padded = CASES[name]
  tokens, mask = batch(length, padded)
  result = convert.compare_with_hf(hf_model(**overrides), tokens, mask, hash_seed=3)
  assert result["hidden"] < TOL and result["logits"] < TOL, result


@pytest.mark.parametrize("name", ["local_only", "lsh_one_round"])
def test_single_round_outputs_match_float32_transformers(name):
  overrides, length, padded = CASES[name]
  tokens, mask = batch(length, padded)
  model = hf_model(dtype=torch.float32, **overrides)
  result = convert.compare_with_hf(model, tokens, mask, hash_seed=3)
  assert result["hidden"] < TOL and result["logits"] < TOL, result


def test_logits_match_without_the_comparison_helper():
  model = hf_model(**CASES["local_only"][0]).eval()
  tokens, _ = batch(24)
  with torch.no_grad():
    expected = (model(torch.as_tensor(tokens)).logits + model.lm_head.bias).numpy()
  config, params = convert.from_hf_model(model)
  logits = ReformerLM(config.replace(deterministic=True)).apply({"params": params}, tokens)
  np.testing.assert_allclose(logits, expected, atol=TOL, rtol=0)


def test_hf_padding_to_chunk_lcm():
  # HF pads 52 tokens to 64 (LCM of chunks 16 and 8); our LSH layers pad to 56 alone, which
  # changes the sorted chunks that wrap around.
  model = hf_model(attn_layers=["local", "lsh"], local_attn_chunk_length=16, num_hashes=2)
  tokens, _ = batch(52)
  result = convert.compare_with_hf(model, tokens, hf_padding=True)
  assert result["hidden"] < TOL and result["logits"] < TOL, result
  assert convert.compare_with_hf(model, tokens)["logits"] > 1e-2


def test_gradients_match_transformers_reversible_backward():
  # HF trains only on lengths equal to prod(axial_pos_shape).
  model = hf_model(attn_layers=["local", "lsh"], axial_pos_embds=True, axial_pos_shape=[4, 8],
                   num_hashes=2)
  tokens, _ = batch(32)
  result = convert.compare_gradients_with_hf(model, tokens, hash_seed=5)
  loss = result.pop("loss")
  assert loss < 1e-5
  assert len(result) == len(list(model.parameters()))
  worst = max(result, key=result.get)
  assert result[worst] < TOL, (worst, result[worst])


@pytest.mark.parametrize("training", [False, True])
def test_comparisons_leave_the_hf_model_as_they_found_it(training):
  model = hf_model(attn_layers=["local", "lsh"], axial_pos_embds=True, axial_pos_shape=[4, 8])
  lsh = [m for m in model.modules() if type(m).__name__ == "LSHSelfAttention"]
  seeds = [m.hash_seed for m in lsh]
  model.train(training)
  tokens, _ = batch(32)
  convert.compare_with_hf(model, tokens, hash_seed=7)
  convert.compare_gradients_with_hf(model, tokens, hash_seed=7)
  assert model.training == training
  assert [m.hash_seed for m in lsh] == seeds and 7 not in seeds
  assert all(p.grad is None for p in model.parameters())


def test_transformers_5_lm_head_ignores_its_bias():
  model = hf_model(dtype=torch.float32, attn_layers=["local", "local"]).eval()
  tokens = torch.as_tensor(batch(16)[0])
  assert "lm_head.bias" in model.state_dict()
  with torch.no_grad():
    before = model(tokens).logits
    model.lm_head.bias.add_(1.0)
    after = model(tokens).logits
  # transformers 5.x: the parameter exists but is never added (4.x tied it to the decoder).
  assert torch.equal(before, after)
  assert model.lm_head.decoder.bias is None
  config, params = convert.from_hf_model(model)
  np.testing.assert_array_equal(params["lm_head"]["bias"], model.lm_head.bias.detach().numpy())
  assert config.lm_head_bias


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_hf_rotations_are_torch_randn_after_manual_seed(dtype):
  config = convert.config_from_hf({**BASE, "num_hashes": 3, "num_buckets": [2, 4]})
  torch.manual_seed(11)
  expected = torch.randn((2, 8, 3, 3), dtype=getattr(torch, dtype)).numpy()
  np.testing.assert_array_equal(convert.hf_rotations(config, 11, dtype), expected)


def test_config_round_trip_and_defaults():
  config = convert.config_from_hf({"model_type": "reformer", "is_decoder": True})
  # transformers' defaults: 6 layers local/lsh, 256 wide, axial (64, 64) x (64, 192).
  assert config.attention_types == ("local", "lsh") * 3
  assert (config.d_model, config.axial_shape, config.axial_dims) == (256, (64, 64), (64, 192))
  assert not config.strict_causal and config.layer_norm_eps == 1e-12
  assert convert.config_from_hf(convert.hf_config_from(config)) == config


@pytest.mark.parametrize("change, message", [
    (dict(is_decoder=False, architectures=["ReformerModelWithLMHead"]), "encoder-only"),
    (dict(architectures=["ReformerForMaskedLM"]), "ReformerForMaskedLM with is_decoder=True"),
    (dict(hidden_act="gelu_fast"), "hidden_act"),
    (dict(attn_layers=["local", "global"]), "attn_layers"),
    (dict(tie_word_embeddings=True), "tie_word_embeddings"),
])
def test_refuses_unsupported_configs(change, message):
  with pytest.raises(ValueError, match=message):
    convert.config_from_hf({**BASE, **change})


def test_refuses_weights_that_do_not_match():
  config = convert.config_from_hf(BASE)
  state_dict = {k: v.detach().numpy() for k, v in hf_model().state_dict().items()}
  bare = {k[len("reformer."):]: v for k, v in state_dict.items() if k.startswith("reformer.")}
  with pytest.raises(ValueError, match="bare ReformerModel"):
    convert.params_from_hf(bare, config)
  with pytest.raises(ValueError, match="extra"):
    convert.params_from_hf({**state_dict, "classifier.weight": np.zeros(3)}, config)
  with pytest.raises(ValueError, match="shape"):
    convert.params_from_hf(state_dict, config.replace(d_ff=64))


def test_export_round_trip(tmp_path):
  config, params = convert.from_hf_model(hf_model(attn_layers=["local", "lsh"],
                                               axial_pos_embds=True))
  convert.to_hf(config, params, str(tmp_path))
  loaded = transformers.ReformerModelWithLMHead.from_pretrained(str(tmp_path))
  config2, params2 = convert.from_hf_model(loaded)
  assert config2 == config
  jax.tree.map(np.testing.assert_array_equal, params2, params)
  with pytest.raises(ValueError, match="strict_causal"):
    convert.hf_config_from(config.replace(strict_causal=True))


def _cli(module, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
  result = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout.strip().splitlines()


def test_cli_import_then_evaluate_and_sample(tmp_path):
  # Like google/reformer-enwik8: 258 ids, byte b is id b + 2.
  model = hf_model(dtype=torch.float32, vocab_size=258, axial_pos_embds=True, num_hashes=2)
  model.save_pretrained(tmp_path / "hf")
  # transformers 4.x wrote pytorch_model.bin, with the tied lm_head.decoder.bias as well.
  (tmp_path / "hf_bin").mkdir()
  (tmp_path / "hf_bin" / "config.json").write_text((tmp_path / "hf" / "config.json").read_text())
  state_dict = dict(model.state_dict(), **{"lm_head.decoder.bias": model.lm_head.bias})
  torch.save(state_dict, tmp_path / "hf_bin" / "pytorch_model.bin")
  _, from_bin = convert.from_hf(str(tmp_path / "hf_bin"))
  _, from_safetensors = convert.from_hf(str(tmp_path / "hf"))
  jax.tree.map(np.testing.assert_array_equal, from_bin, from_safetensors)
  summary = convert.import_hf(str(tmp_path / "hf_bin"), str(tmp_path / "out_bin"),
                              verify=True)
  assert summary["verify"]["logits"] < TOL and summary["verify"]["hidden"] < TOL, summary
  with pytest.raises(ValueError, match="already holds checkpoints"):
    convert.write_workdir(ReformerConfig(), None, str(tmp_path / "out_bin"))

  workdir, text_file = str(tmp_path / "out"), tmp_path / "text.txt"
  text_file.write_text("It was the best of times, it was the worst of times. " * 100)
  summary = json.loads(_cli("reformer_jax.convert", f"--hf_dir={tmp_path / 'hf'}",
                            f"--workdir={workdir}", "--token_offset=2",
                            f"--data_file={text_file}")[-1])
  assert summary["params"] == sum(p.numel() for p in model.parameters())
  metrics = json.loads(_cli("reformer_jax.evaluate", f"--workdir={workdir}",
                            "--gin_bindings=Experiment.eval_batches=1",
                            "--gin_bindings=BATCH_SIZE=2")[-1])
  assert metrics["step"] == 0 and metrics["n_hashes"] == 2
  assert np.isfinite(metrics["eval_loss"])
  text = "\n".join(_cli("reformer_jax.sample", f"--workdir={workdir}", "--prompt=ab",
                        "--length=8", "--temperature=0"))
  assert text.startswith("ab")


@pytest.mark.parametrize("length, expected", [(64, 32), (128, (8, 8))])
def test_unset_num_buckets_resolved_as_hf_does(length, expected):
  # max_position_embeddings, not the length, caps HF's unfactorised count: 2 * max(16, 4).
  overrides = dict(attn_layers=["lsh", "lsh"], lsh_attn_chunk_length=4, num_buckets=None,
                   max_position_embeddings=1024, num_hashes=2)
  model = hf_model(**overrides)
  assert convert.hf_num_buckets(model.config.to_dict(), length) == expected
  tokens, _ = batch(length)
  result = convert.compare_with_hf(model, tokens, hash_seed=3)
  assert result["hidden"] < TOL and result["logits"] < TOL, result
  lsh = [m for m in model.modules() if type(m).__name__ == "LSHSelfAttention"]
  assert model.config.num_buckets is None and all(m.num_buckets is None for m in lsh)
  with torch.no_grad():
    model.eval()(torch.as_tensor(tokens))
  picked = model.config.num_buckets
  assert (tuple(picked) if isinstance(picked, list) else picked) == expected


def test_import_checks_inputs_and_verifies_before_writing(tmp_path, monkeypatch):
  hf_model(dtype=torch.float32, num_buckets=None).save_pretrained(tmp_path / "hf")
  hf_dir, workdir = str(tmp_path / "hf"), tmp_path / "out"
  with pytest.raises(ValueError, match="--token_offset=-1"):
    convert.import_hf(hf_dir, str(workdir), token_offset=-1)
  with pytest.raises(ValueError, match="--seq_len=128.*between 1 and 64"):
    convert.import_hf(hf_dir, str(workdir), seq_len=128)

  def fail(*unused_args, **unused_kwargs):
    raise RuntimeError("verification failed")

  with monkeypatch.context() as patch:
    patch.setattr(convert, "compare_with_hf", fail)
    with pytest.raises(RuntimeError, match="verification failed"):
      convert.import_hf(hf_dir, str(workdir), verify=True)
  assert not workdir.exists()
  summary = convert.import_hf(hf_dir, str(workdir), verify=True)
  assert summary["verify"]["logits"] < TOL and summary["verify"]["hidden"] < TOL, summary
  assert "bind Experiment.data" in summary["notes"][0]


def test_cli_exports_a_workdir_whose_config_train_rewrote(tmp_path):
  from reformer_jax.trainer import gin_setup  # pylint: disable=import-outside-toplevel
  model = hf_model(dtype=torch.float32, vocab_size=258, axial_pos_embds=True)
  model.save_pretrained(tmp_path / "hf")
  workdir = tmp_path / "out"
  convert.import_hf(str(tmp_path / "hf"), str(workdir), token_offset=2)
  # As `reformer_jax.train` does: config.gin rewritten from gin, with short names.
  gin_setup.parse([str(workdir / "config.gin")])
  gin_setup.write_config(str(workdir))
  assert "offset_tokens.offset = 2" in (workdir / "config.gin").read_text()
  summary = json.loads(_cli("reformer_jax.convert", f"--workdir={workdir}",
                            f"--to_hf_dir={tmp_path / 'export'}")[-1])
  assert summary["step"] == 0
  exported = transformers.ReformerModelWithLMHead.from_pretrained(str(tmp_path / "export"))
  for key, value in model.state_dict().items():
    np.testing.assert_array_equal(exported.state_dict()[key].numpy(), value.numpy())


def test_encoders_verify_without_a_workdir_and_refuse_one(tmp_path, capsys):
  """`--hf_dir=DIR --verify` alone checks any converting class; a workdir is LM-only."""
  torch.manual_seed(0)
  classifier = transformers.ReformerForSequenceClassification(transformers.ReformerConfig(
      **{**BASE, "is_decoder": False, "num_labels": 3, "lsh_num_chunks_after": 1}))
  classifier.save_pretrained(tmp_path / "hf")
  hf_dir, workdir = str(tmp_path / "hf"), tmp_path / "out"
  with pytest.raises(ValueError, match="ReformerForSequenceClassification; workdirs hold "
                                       "language models.*--verify"):
    convert.import_hf(hf_dir, str(workdir))
  assert not workdir.exists()
  flag = {name: types.SimpleNamespace(value=None) for name in
          ("workdir", "to_hf_dir", "seq_len", "token_offset", "data_file")}
  convert.main({**flag, "hf_dir": types.SimpleNamespace(value=hf_dir),
                "verify": types.SimpleNamespace(value=True)})
  verified = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["verify"]
  assert verified["architecture"] == "ReformerForSequenceClassification"
  assert verified["hidden"] < TOL and verified["logits"] < TOL, verified
