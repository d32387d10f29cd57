"""Gin at the edge: registers the configurables, finds config files, parses.

Registered names (the math stays gin-free): ReformerConfig, OptimizerConfig,
MeshConfig, Experiment, the tasks of `tasks.TASKS` (CausalLM, MaskedLM, Classification,
SpanQA, MQAR) and the data sources shipped_corpus, local_file, python_stdlib_corpus,
tfds_text, duplication, mqar, listops, text_label_files, tfds_classification,
span_qa_files. Config files are looked up as given,
then in the repository's `configs/` directory and in `./configs`, so
`include 'models/x.gin'` works from any working directory.
"""
import dataclasses
import difflib
import inspect
import logging
import os
import pathlib
import re
from typing import Sequence

import gin
from gin import config_parser

from reformer_jax import data
from reformer_jax.models import ReformerConfig
from reformer_jax.trainer.experiment import Experiment
from reformer_jax.trainer.optim import OptimizerConfig
from reformer_jax.trainer.sharding import MeshConfig
from reformer_jax.trainer.tasks import TASKS

CONFIG_DIRS = (pathlib.Path(__file__).resolve().parents[2] / "configs",  # a checkout
               pathlib.Path(__file__).resolve().parents[1] / "configs",  # an installed wheel
               pathlib.Path.cwd() / "configs")

REGISTERED = {
    "ReformerConfig": ReformerConfig,
    "OptimizerConfig": OptimizerConfig,
    "MeshConfig": MeshConfig,
    "Experiment": Experiment,
    "shipped_corpus": data.shipped_corpus,
    "local_file": data.local_file,
    "python_stdlib_corpus": data.python_stdlib_corpus,
    "tfds_text": data.tfds_text,
    "duplication": data.duplication,
    "mqar": data.mqar,
    "listops": data.listops,
    "text_label_files": data.text_label_files,
    "tfds_classification": data.tfds_classification,
    "span_qa_files": data.span_qa_files,
    **{task.__name__: task for task in TASKS},
}
CONFIGURABLES = {name: gin.external_configurable(fn, name)
                 for name, fn in REGISTERED.items()}


def config_dirs() -> list[pathlib.Path]:
  return [d for d in dict.fromkeys(CONFIG_DIRS) if d.is_dir()]


for _directory in config_dirs():
  gin.add_config_file_search_path(str(_directory))


def resolve_file(name: str) -> str:
  """The path of gin file `name`: as given, or under a configs directory."""
  candidates = [pathlib.Path(name)] + [d / name for d in config_dirs()]
  for path in candidates:
    if path.is_file():
      return str(path)
  known = sorted({p.relative_to(d).as_posix() for d in config_dirs()
                  for p in d.rglob("*.gin")})
  raise FileNotFoundError(
      f"gin file {name!r} not found (looked in ., "
      f"{', '.join(str(d) for d in config_dirs())}); available: "
      f"{', '.join(known)}.")


def parse(gin_files: Sequence[str], gin_bindings: Sequence[str] = ()):
  """Clears gin, then parses `gin_files` (later override earlier) and bindings.

  Bindings are checked before parsing: an unknown macro, configurable or
  parameter raises ValueError naming it and the closest valid name; so does a
  reference to an undefined macro (`%NAME`), in bindings and files. Relative
  paths of the data sources (`PATH_PARAMETERS`) are made absolute, so the
  config written to the workdir works from any directory.
  """
  gin.clear_config()
  try:
    _parse(gin_files, gin_bindings)
  except ImportError as e:  # a gin `import` statement
    raise ValueError(f"{e}\nThe config imports a module Python cannot find: install it "
                     "or add its directory to PYTHONPATH.") from None
  except KeyError as e:  # e.g. a selector that names two configurables
    raise ValueError(str(e.args[0] if e.args else e)) from None
  _check_macro_references(_defined_macros())
  _make_paths_absolute()


def _parse(gin_files: Sequence[str], gin_bindings: Sequence[str]):
  # gin's package-resource reader logs an error for each search-path miss of
  # an `include`; the misses are expected.
  logging.disable(logging.ERROR)
  # The mesh is built by gin, so that `MeshConfig.fsdp = 8` applies without naming
  # `Experiment.mesh` (a file may still bind it).
  gin.parse_config("Experiment.mesh = @MeshConfig()")
  try:
    for name in gin_files:
      try:
        gin.parse_config_file(resolve_file(name))
      except ValueError as e:
        raise ValueError(_with_suggestion(str(e))) from None
  finally:
    logging.disable(logging.NOTSET)
  macros = _defined_macros()
  for binding in gin_bindings:
    for statement in config_parser.ConfigParser(
        binding, gin.config.ParserDelegate(skip_unknown=True)):
      if isinstance(statement, config_parser.BindingStatement):
        _check_binding(statement, binding, macros)
  gin.parse_config(list(gin_bindings))


def make_experiment() -> Experiment:
  """The Experiment the parsed config describes.

  A value of the wrong kind that a configurable's own checks do not catch
  (TypeError inside a gin call) is reported as a ValueError naming the call.
  A configurable's ValueError about a parameter bound to a macro leads with the
  macro the user wrote (`SEQ_LEN=-5: max_len must be ...`).
  """
  try:
    return CONFIGURABLES["Experiment"]()
  except ValueError as e:
    raise ValueError(_name_the_bindings(str(e))) from None
  except TypeError as e:
    message = str(e).splitlines()
    calls = re.findall(r"In call to configurable '([^']+)'", str(e))
    where = f" (in {calls[-1]})" if calls else ""
    raise ValueError(f"the gin config gives a value of the wrong kind{where}: "
                     f"{message[0]}. Check the bindings of that configurable "
                     "(numbers unquoted, strings quoted, @name() for a config "
                     "object, @name without () for a data source).") from e


def written_names() -> dict[str, str]:
  """{'Experiment.seq_len': 'SEQ_LEN', ...}: each bound parameter and the name the config
  sets it by, the macro it is bound to (`%SEQ_LEN`) or else the parameter itself."""
  names = {}
  for statement in config_parser.ConfigParser(
      gin.config_str(), gin.config.ParserDelegate(skip_unknown=True)):
    if isinstance(statement, config_parser.BindingStatement) and statement.arg_name:
      target = f"{statement.selector}.{statement.arg_name}"
      macros = list(_macro_references(statement.value))
      value = statement.value
      names[target] = (macros[0] if isinstance(value, gin.config.ConfigurableReference)
                       and macros else target)
  return names


def _name_the_bindings(message: str) -> str:
  """`message` (a configurable's error, with gin's call lines) led by the macros bound to
  the parameters it mentions: 'SEQ_LEN=-5: max_len must be ... (ReformerConfig.max_len =
  %SEQ_LEN)'."""
  first, _, rest = message.partition("\n")
  calls = set(re.findall(r"In call to configurable '([^']+)'", rest))
  named, bound = [], []
  for target, name in written_names().items():
    selector, arg = target.rsplit(".", 1)
    if (selector.rsplit("/", 1)[-1] in calls and name not in first
        and re.search(rf"\b{arg}\b", first)):
      macro = name != target
      named.append(f"{name}={gin.query_parameter(f'%{name}' if macro else target)!r}")
      if macro:
        bound.append(f"{target} = %{name}")
  if not named:
    return message
  first = ", ".join(named) + ": " + first.rstrip(".")
  first += f" ({'; '.join(bound)})." if bound else "."
  return f"{first}\n{rest}" if rest else first


def write_config(workdir: str):
  """Writes the parsed config (every binding, macros kept) to `workdir/config.gin`.

  `gin.config_str()` rather than the operative config: the data source is built after
  this is written, and its bindings (e.g. `local_file.path`) must be saved too, or
  evaluate / sample / resume could not rebuild it.
  """
  with open(os.path.join(workdir, "config.gin"), "w") as f:
    f.write(gin.config_str())


def _defined_macros() -> set[str]:
  statements = config_parser.ConfigParser(
      gin.config_str(), gin.config.ParserDelegate(skip_unknown=True))
  return {s.selector for s in statements
          if isinstance(s, config_parser.BindingStatement) and not s.arg_name}


def _macro_references(value):
  """Names of the macros `value` (a parsed binding value) refers to as `%NAME`."""
  if isinstance(value, gin.config.ConfigurableReference):
    if value.selector == "gin.macro":
      yield "/".join(value.scopes)
  elif isinstance(value, (list, tuple, set)):
    for item in value:
      yield from _macro_references(item)
  elif isinstance(value, dict):
    for item in value.values():
      yield from _macro_references(item)


def _check_macro_references(macros: set[str]):
  """Raises ValueError for a binding that refers to an undefined macro."""
  statements = config_parser.ConfigParser(
      gin.config_str(), gin.config.ParserDelegate(skip_unknown=True))
  for statement in statements:
    if not isinstance(statement, config_parser.BindingStatement):
      continue
    for name in _macro_references(statement.value):
      if name not in macros:
        target = ".".join(filter(None, (statement.selector, statement.arg_name)))
        raise ValueError(f"gin binding {target} refers to %{name}, which no "
                         f"file or binding defines{_suggest(name, macros)}. "
                         f"Macros: {', '.join(sorted(macros)) or 'none'}.")


# Data-source parameters that hold paths, made absolute when parsed.
PATH_PARAMETERS = ("local_file.path", "python_stdlib_corpus.directory", "tfds_text.data_dir",
                   "text_label_files.train", "text_label_files.eval", "text_label_files.test",
                   "tfds_classification.data_dir", "span_qa_files.train",
                   "span_qa_files.eval", "span_qa_files.test")


def _make_paths_absolute():
  """Rebinds relative path parameters (or the macros they use) as absolute paths."""
  for name in PATH_PARAMETERS:
    try:
      value = gin.query_parameter(name)
    except ValueError:  # not bound
      continue
    while (isinstance(value, gin.config.ConfigurableReference)
           and value.selector == "gin.macro"):
      name = f"{'/'.join(value.scopes)}/gin.macro.value"
      value = gin.query_parameter(name)
    if isinstance(value, str) and value and not os.path.isabs(os.path.expanduser(value)):
      gin.bind_parameter(name, os.path.abspath(value))


def _check_binding(statement, binding: str, macros: set[str]):
  """Raises ValueError for a binding whose macro/configurable/parameter is unknown."""
  name, arg = statement.selector, statement.arg_name
  if not arg:
    if name not in macros:
      raise ValueError(f"unknown gin binding {binding!r}: no macro {name!r} in "
                       f"the config{_suggest(name, macros)}. Macros: "
                       f"{', '.join(sorted(macros)) or 'none'}.")
    return
  configurable = name.rsplit(".", 1)[-1]
  if configurable not in REGISTERED:
    raise ValueError(f"unknown gin binding {binding!r}: no configurable "
                     f"{name!r}{_suggest(configurable, REGISTERED)}.")
  params = _parameters(REGISTERED[configurable])
  if arg not in params:
    raise ValueError(f"unknown gin binding {binding!r}: {configurable} has no "
                     f"parameter {arg!r}{_suggest(arg, params)}.")


def _with_suggestion(message: str) -> str:
  """gin's error for an unknown configurable or parameter in a file, with the closest
  valid name added to its first line."""
  first, _, rest = message.partition("\n")
  first, hint = first.rstrip("."), ""
  unknown = re.match(r"No configurable matching '([\w.]+)'", first)
  if unknown:
    hint = _suggest(unknown.group(1).rsplit(".", 1)[-1], REGISTERED)
  unknown = re.match(r"Configurable '(\w+)' doesn't have a parameter named '(\w+)'", first)
  if unknown and unknown.group(1) in REGISTERED:
    hint = _suggest(unknown.group(2), _parameters(REGISTERED[unknown.group(1)]))
  first = f"{first}{hint}."
  return f"{first}\n{rest}" if rest else first


def _parameters(fn) -> list[str]:
  if dataclasses.is_dataclass(fn):
    return [f.name for f in dataclasses.fields(fn)]
  return list(inspect.signature(fn).parameters)


def _suggest(name: str, options) -> str:
  close = difflib.get_close_matches(name, list(options), n=1)
  return f" (did you mean {close[0]!r}?)" if close else ""
