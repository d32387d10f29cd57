"""The README and docs/ stay true: their examples run, their links and commands resolve.

* Every ```python block of a page runs, the page's blocks in order in one namespace, with a
  fresh temporary directory as the working directory.
* Every relative link (and its #anchor, for Markdown targets) points to something that exists.
* Every `python -m MODULE --flag` in a ```bash block or an inline code span names a module of
  this repository and flags that module defines.
* `.ci/run` installs and tests with exactly the README's commands.
"""
import importlib.util
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", flags=re.S | re.M)
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
_INLINE_COMMAND = re.compile(r"`(python -m [^`]+)`")
_OPTIONAL_PACKAGES = ("torch", "transformers")


def _name(page):
  return str(page.relative_to(ROOT))


def _blocks(page, language):
  return [code for lang, code in _FENCE.findall(page.read_text()) if lang == language]


def _prose(page):
  """The page without its fenced blocks."""
  return _FENCE.sub("", page.read_text())


def _anchors(page):
  """GitHub's anchors of the page's headings: lower case, punctuation dropped, '-' for ' '."""
  headings = re.findall(r"^#+\s+(.*)$", _prose(page), flags=re.M)
  return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_docs_pages_exist_and_the_readme_links_each():
  docs = [p for p in PAGES if p.parent.name == "docs"]
  assert len(docs) >= 5, docs
  linked = {(ROOT / link.split("#")[0]).resolve()
            for link in _LINK.findall(_prose(ROOT / "README.md"))}
  assert not [_name(p) for p in docs if p.resolve() not in linked]


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_python_examples_run(page, tmp_path, monkeypatch):
  blocks = _blocks(page, "python")
  if not blocks:
    pytest.skip(f"{_name(page)} has no python blocks")
  missing = [m for m in _OPTIONAL_PACKAGES
             if re.search(rf"^\s*(import|from) {m}\b", "\n".join(blocks), flags=re.M)
             and importlib.util.find_spec(m) is None]
  if missing:
    pytest.skip(f"{_name(page)}'s examples need {missing} (pip install -e '.[test]')")
  monkeypatch.chdir(tmp_path)
  namespace = {"__name__": "__main__"}
  for index, code in enumerate(blocks):
    exec(compile(code, f"{_name(page)}[python block {index}]", "exec"), namespace)


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_relative_links_resolve(page):
  broken = []
  for link in _LINK.findall(_prose(page)):
    if re.match(r"^[a-z]+:", link):
      continue
    path, _, anchor = link.partition("#")
    target = (page.parent / path).resolve() if path else page
    if not target.exists():
      broken.append(link)
    elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
      broken.append(f"{link} (no heading with that anchor)")
  assert not broken, broken


def _commands(page):
  """The `python -m ...` command lines of the page's bash blocks and inline code spans."""
  shell = "\n".join(_blocks(page, "bash")).replace("\\\n", " ")
  lines = [line.split("#")[0] for line in shell.splitlines()]
  spans = [" ".join(span.split()) for span in _INLINE_COMMAND.findall(_prose(page))]
  return [c for c in lines + spans if "python -m " in c]


def _defined_flags(module):
  """The flags `module`'s source defines (absl DEFINE_* or argparse add_argument)."""
  path = ROOT / (module.replace(".", "/") + ".py")
  sources = [path] + sorted((ROOT / "experiments" / "common").glob("*.py")
                            if module.startswith("experiments.") else [])
  text = "\n".join(p.read_text() for p in sources)
  return set(re.findall(r'DEFINE_\w+\(\s*"(\w+)"', text)) | set(
      re.findall(r'add_argument\(\s*"--([\w-]+)"', text))


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_documented_commands_name_real_modules_and_flags(page):
  problems = []
  for command in _commands(page):
    module, *args = command.split("python -m ", 1)[1].split()
    if module == "pytest":
      continue
    if not (ROOT / (module.replace(".", "/") + ".py")).is_file():
      problems.append(f"{command}: no module {module}")
      continue
    flags = {a[2:].split("=")[0] for a in args if a.startswith("--")}
    unknown = sorted(flags - _defined_flags(module))
    if unknown:
      problems.append(f"{command}: {module} defines no {unknown}")
  assert not problems, problems


def test_ci_installs_and_tests_as_the_readme_says():
  readme = "\n".join(_blocks(ROOT / "README.md", "bash"))
  ci = (ROOT / ".ci" / "run").read_text().splitlines()
  install = next(line for line in readme.splitlines() if line.startswith("pip install"))
  test = next(line for line in readme.splitlines() if line.startswith("python -m pytest"))
  assert install in ci and ci[-1] == test, (install, test, ci)
  assert "-c constraints.txt" in install and (ROOT / "constraints.txt").is_file()


def test_constraints_pin_exact_versions_of_the_requirements():
  pins = {}
  for line in (ROOT / "constraints.txt").read_text().splitlines():
    line = line.split("#")[0].strip()
    if line:
      name, _, version = line.partition("==")
      assert version, f"constraints.txt: {line!r} is not name==version"
      pins[re.sub(r"[-_.]+", "-", name.lower())] = version
  for requirements in ("requirements.txt", "requirements-test.txt"):
    for line in (ROOT / requirements).read_text().splitlines():
      name = re.split(r"[<>=!~ #\[]", line.strip(), maxsplit=1)[0]
      if name:
        assert re.sub(r"[-_.]+", "-", name.lower()) in pins, f"{requirements}: {name} unpinned"
  assert pins["jax"] == pins["jaxlib"] == "0.10.2" and pins["torch"] == "2.13.0"
  assert "reformer-jax" not in pins
