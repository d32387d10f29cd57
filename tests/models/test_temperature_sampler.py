"""Generation with and without the cache against a plain loop over the full model."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer_jax.models import ReformerConfig, ReformerLM
from reformer_jax.models import decoding
from reformer_jax.models.temperature_sampler import Sampling, generate_tokens, sample_tokens

CONFIG = ReformerConfig(vocab_size=16, d_model=16, d_ff=32, n_heads=2, d_head=4, n_layers=2,
                        attention_types=("local", "lsh"), max_len=32, lsh_chunk_len=4,
                        local_chunk_len=4, n_buckets=4, n_hashes=2, dropout_rate=0.,
                        attention_dropout=0.)
PROMPTS = [[3, 1, 4], [1, 5, 9, 2, 6, 5, 3]]
NEW = 12


@pytest.fixture(scope="module")
def params():
  model = ReformerLM(CONFIG.replace(deterministic=True))
  shapes = jax.eval_shape(model.init, {"params": jax.random.PRNGKey(0)},
                          jnp.zeros((1, 8), jnp.int32), lsh_rotations=jnp.zeros((2, 4, 2, 2)))
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape), s.dtype),
                      shapes["params"])


def _greedy_loop(params, prompt, total, n_new, seed=0):
  """Greedy tokens of a plain loop running the full model on the whole buffer."""
  config = decoding.decoding_config(CONFIG, total)
  rotations = decoding.draw_lsh_rotations(config, seed)
  apply = jax.jit(ReformerLM(config).apply)
  tokens = list(prompt)
  for _ in range(n_new):
    buffer = jnp.asarray([tokens + [0] * (total - len(tokens))], jnp.int32)
    tokens.append(int(jnp.argmax(apply({"params": params}, buffer,
                                       lsh_rotations=rotations)[0, len(tokens) - 1])))
  return tokens[len(prompt):]


def test_greedy_tokens_of_the_cache_equal_the_uncached_path_and_a_plain_loop(params):
  greedy = Sampling(temperature=0.)
  cached = generate_tokens(CONFIG, params, PROMPTS, NEW, sampling=greedy)
  uncached = generate_tokens(CONFIG, params, PROMPTS, NEW, sampling=greedy, use_cache=False)
  total = max(map(len, PROMPTS)) + NEW
  assert cached.used_cache and not uncached.used_cache
  for ours, plain in zip(cached.tokens, uncached.tokens):
    np.testing.assert_array_equal(ours, plain)
  np.testing.assert_array_equal(cached.tokens[0], _greedy_loop(params, PROMPTS[0], total, NEW))
  assert cached.new_tokens == 2 * NEW and cached.tokens_per_second > 0
  config = decoding.decoding_config(CONFIG, total)
  assert cached.cache_bytes == decoding.cache_bytes(decoding.cache_shapes(config, 2, total))
  assert uncached.cache_bytes == 0


def test_eos_stops_each_sequence_and_seeds_repeat(params):
  sampling = Sampling(temperature=1.5)
  first = generate_tokens(CONFIG, params, PROMPTS, NEW, sampling=sampling, seed=3)
  again = generate_tokens(CONFIG, params, PROMPTS, NEW, sampling=sampling, seed=3)
  other = generate_tokens(CONFIG, params, PROMPTS, NEW, sampling=sampling, seed=4)
  jax.tree.map(np.testing.assert_array_equal, first.tokens, again.tokens)
  assert any(not np.array_equal(a, b) for a, b in zip(first.tokens, other.tokens))
  eos = int(first.tokens[0][4])
  stopped = generate_tokens(CONFIG, params, PROMPTS, NEW, sampling=sampling, seed=3,
                            eos_id=eos)
  for tokens, full in zip(stopped.tokens, first.tokens):
    end = list(full).index(eos) + 1 if eos in full else NEW
    np.testing.assert_array_equal(tokens, full[:end])
  assert len(stopped.tokens[0]) <= 5


def test_top_k_and_top_p_keep_only_the_likeliest_tokens():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]] * 2000))
  draw = lambda **s: np.asarray(sample_tokens(logits, jax.random.PRNGKey(0), Sampling(**s)))
  assert set(draw(top_k=2)) == {0, 1}
  assert set(draw(top_p=0.75)) == {0, 1}          # 0.5 < 0.75 <= 0.5 + 0.3
  assert set(draw(top_p=0.5)) == {0}
  assert set(draw(top_p=1.0)) == {0, 1, 2, 3}
  assert set(draw(temperature=0.)) == {0}
  counts = np.bincount(draw(top_k=3), minlength=4) / 2000
  np.testing.assert_allclose(counts[:3], np.array([0.5, 0.3, 0.15]) / 0.95, atol=0.04)


def test_the_uncached_path_slides_past_the_position_table(params):
  with pytest.raises(ValueError, match="exceed the model's position table of 32"):
    generate_tokens(CONFIG, params, PROMPTS, 30)
  out = generate_tokens(CONFIG, params, PROMPTS, 30, use_cache=False)
  assert [len(t) for t in out.tokens] == [30, 30]


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompts=[[1], []]), "prompt 1 is empty"),
    (dict(prompts=[list(range(16)) * 3]), "longer than the model's position table"),
    (dict(prompts=[[1, 16]]), r"integer ids in \[0, 16\)"),
    (dict(prompts=[]), "no prompts"),
    (dict(max_new_tokens=0), "max_new_tokens must be an int >= 1"),
    (dict(eos_id=16), "eos_id must be a token id"),
    (dict(config=CONFIG.replace(strict_causal=False)), "not strictly causal"),
])
def test_bad_input_gets_one_clear_error(params, kwargs, message):
  args = dict(config=CONFIG, params=params, prompts=PROMPTS, max_new_tokens=4) | kwargs
  with pytest.raises(ValueError, match=message):
    generate_tokens(**args)


@pytest.mark.parametrize("settings, message", [
    (dict(top_p=0.), r"top_p must be in \(0, 1\]"), (dict(top_p=1.5), "top_p"),
    (dict(temperature=-1.), "temperature must be >= 0"), (dict(top_k=-1), "top_k"),
    (dict(top_k=1.5), "top_k")])
def test_bad_sampling_settings(settings, message):
  with pytest.raises(ValueError, match=message):
    Sampling(**settings)
