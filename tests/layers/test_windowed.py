"""Tests for reformer_jax.layers.windowed's step sizing (values: lsh/local attention tests)."""
from reformer_jax.layers import windowed


def test_default_step_size_fits_entries_and_element_budget():
  # crime-and-punishment LSH: batch 1, 2 heads, d_model 256, chunks of 64: 4096 entries.
  assert windowed.default_chunks_per_step(1, 2, 256, 64) == windowed.STEP_ENTRIES // 64
  # enwik8 widths at batch 8 (8 heads, d_model 1024): the element budget allows 128
  # entries, less than a chunk of 256, so one chunk per step.
  assert windowed.default_chunks_per_step(8, 8, 1024, 256) == 1
  for batch, heads, features, chunk in [(8, 1, 1024, 128), (2, 4, 512, 32), (1, 1, 64, 8)]:
    steps = windowed.default_chunks_per_step(batch, heads, features, chunk)
    entries = steps * chunk
    assert steps >= 1 and entries <= windowed.STEP_ENTRIES
    assert steps == 1 or batch * heads * entries * features <= windowed.STEP_ELEMENTS


def test_group_size_divides_the_chunks():
  assert windowed.group_size(12, 5) == 4
  assert windowed.group_size(7, 64) == 7
  assert windowed.group_size(7, 3) == 1
