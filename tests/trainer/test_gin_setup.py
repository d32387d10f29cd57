"""Gin parsing: search paths, override order, binding checks, operative config."""
import gin
import pytest

from reformer_jax.trainer import gin_setup


def test_include_resolves_from_any_working_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  gin_setup.parse(["quickstart.gin"])
  assert gin_setup.make_experiment().model.n_layers == 2


def test_later_files_and_then_bindings_override(tmp_path):
  first, second = tmp_path / "a.gin", tmp_path / "b.gin"
  first.write_text("include 'quickstart.gin'\nTRAIN_STEPS = 7\nBATCH_SIZE = 2\n")
  second.write_text("TRAIN_STEPS = 9\n")
  gin_setup.parse([str(first), str(second)], ["BATCH_SIZE = 4"])
  exp = gin_setup.make_experiment()
  assert (exp.train_steps, exp.batch_size) == (9, 4)


@pytest.mark.parametrize("binding, fragment", [
    ("SEQ_LENN=64", "no macro 'SEQ_LENN' in the config (did you mean 'SEQ_LEN'?)"),
    ("ReformerConfg.n_hashes=2", "(did you mean 'ReformerConfig'?)"),
    ("ReformerConfig.n_hashs=2", "has no parameter 'n_hashs' (did you mean 'n_hashes'?)"),
    ("Experiment.seq_length=64", "(did you mean 'seq_len'?)"),
])
def test_unknown_binding_is_named_with_the_closest_valid_name(binding, fragment):
  with pytest.raises(ValueError, match="unknown gin binding") as info:
    gin_setup.parse(["quickstart.gin"], [binding])
  assert fragment in str(info.value)


def test_missing_gin_file_lists_the_available_configs():
  with pytest.raises(FileNotFoundError) as info:
    gin_setup.parse(["quikstart.gin"])
  assert "'quikstart.gin' not found" in str(info.value)
  assert "quickstart.gin" in str(info.value).split("available:")[1]


def test_operative_config_keeps_macros_so_bindings_can_change_them(tmp_path):
  gin_setup.parse(["quickstart.gin"], ["N_HASHES=1", "SEQ_LEN=96"])
  gin_setup.make_experiment()
  gin_setup.write_config(str(tmp_path))
  written = (tmp_path / "config.gin").read_text()
  assert "N_HASHES = 1" in written and "ReformerConfig.n_hashes = %N_HASHES" in written
  gin_setup.parse([str(tmp_path / "config.gin")], ["N_HASHES=4"])
  exp = gin_setup.make_experiment()
  assert exp.model.n_hashes == 4 and exp.seq_len == 96


def test_relative_data_paths_are_recorded_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  gin_setup.parse(["crime_and_punishment.gin"], ["DATA_PATH='texts/book.txt'"])
  gin_setup.write_config(str(tmp_path))
  assert "local_file.path = %DATA_PATH" in (tmp_path / "config.gin").read_text()
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  monkeypatch.chdir(elsewhere)             # e.g. evaluate run from another directory
  gin_setup.parse([str(tmp_path / "config.gin")])
  assert gin.query_parameter("DATA_PATH/gin.macro.value") == str(tmp_path / "texts" /
                                                                 "book.txt")
  monkeypatch.chdir(tmp_path)
  gin_setup.parse(["quickstart.gin"], ["Experiment.data=@local_file",
                                       "local_file.path='mine.txt'"])
  assert gin.query_parameter("local_file.path") == str(tmp_path / "mine.txt")


def test_undefined_macro_in_a_file_is_named(tmp_path):
  config = tmp_path / "typo.gin"
  config.write_text("include 'quickstart.gin'\nExperiment.batch_size = %BATCH_SIZ\n")
  with pytest.raises(ValueError, match=r"Experiment.batch_size refers to %BATCH_SIZ, which "
                     r"no file or binding defines \(did you mean 'BATCH_SIZE'\?\)"):
    gin_setup.parse([str(config)])


@pytest.mark.parametrize("line, fragment", [
    ("ReformerConfig.n_hashs = 2", "named 'n_hashs' (did you mean 'n_hashes'?).\n"),
    ("ReformerConfg.n_hashes = 2", "'ReformerConfg' (did you mean 'ReformerConfig'?).\n"),
])
def test_unknown_name_in_a_file_is_named_with_the_closest_valid_name(tmp_path, line,
                                                                     fragment):
  config = tmp_path / "typo.gin"
  config.write_text(f"include 'quickstart.gin'\n{line}\n")
  with pytest.raises(ValueError) as info:
    gin_setup.parse([str(config)])
  assert fragment in str(info.value) and "line 2" in str(info.value)


def test_a_missing_imported_module_is_a_value_error_saying_what_to_do(tmp_path):
  config = tmp_path / "imports.gin"
  config.write_text("include 'quickstart.gin'\nimport reformer_jax_no_such_module\n")
  with pytest.raises(ValueError, match="No module named 'reformer_jax_no_such_module'"
                     "(.|\n)*install it or add its directory to PYTHONPATH"):
    gin_setup.parse([str(config)])


def test_an_ambiguous_selector_is_a_value_error(tmp_path):
  for module in ("twin_a", "twin_b"):
    gin.external_configurable(lambda x=0: x, name="reformer_jax_twin", module=module)
  config = tmp_path / "twins.gin"
  config.write_text("include 'quickstart.gin'\nreformer_jax_twin.x = 1\n")
  try:
    with pytest.raises(ValueError, match="Ambiguous selector 'reformer_jax_twin'"):
      gin_setup.parse([str(config)])
  finally:
    for module in ("twin_a", "twin_b"):
      gin.config._REGISTRY.pop(f"{module}.reformer_jax_twin")  # pylint: disable=protected-access
