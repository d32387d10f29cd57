"""reformer_jax: the Reformer (Kitaev, Kaiser, Levskaya 2020) in JAX/Flax."""
import pathlib

import setuptools

_HERE = pathlib.Path(__file__).parent


def _requirements(name):
  lines = (_HERE / name).read_text().splitlines()
  return [l.strip() for l in lines if l.strip() and not l.startswith("#")]


setuptools.setup(
    name="reformer_jax",
    version="0.1.0",
    description="Reformer: LSH attention, reversible layers, chunked "
                "feed-forward and axial positions in JAX/Flax.",
    long_description=(_HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    # The repo's configs/ ships inside the package as reformer_jax/configs, so gin finds
    # `--gin_file=quickstart.gin` and its includes after a non-editable install too.
    packages=setuptools.find_packages(include=["reformer_jax", "reformer_jax.*"])
    + ["reformer_jax.configs", "reformer_jax.configs.models"],
    package_dir={"reformer_jax.configs": "configs"},
    package_data={"reformer_jax": ["data/corpus/*"],
                  "reformer_jax.configs": ["*.gin"],
                  "reformer_jax.configs.models": ["*.gin"]},
    python_requires=">=3.10",
    install_requires=_requirements("requirements.txt"),
    # tpu-plan: libtpu (the version jax's `tpu` extra pins), to compile for TPU topologies on
    # any machine (`--dry_run --target=...`, reformer_jax/trainer/plan.py).
    extras_require={"test": _requirements("requirements-test.txt"),
                    "tpu-plan": ["jax[tpu]"]},
)
