"""configs/ablation.py and configs/ablation_runs.sh: every listed run is a valid config, the base is the reference
run."""
import os
import re
import sys

import pytest

from zf_jax import models, train_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import ablation, reference  # noqa: E402


def _script_runs():
  """[name, arch, *options] of every run of configs/ablation_runs.sh: its `run` and `converged` lines."""
  with open(os.path.join(ROOT, "configs", "ablation_runs.sh")) as f:
    text = f.read()
  runs = [line.split()[1:] for line in text.splitlines() if re.match(r"^\s*run [a-z]", line)]
  converge = re.search(r'^  run "\$name-converged" "\$arch" (.*) "\$@"$', text, re.M).group(1).split()
  return runs + [[f"{name}-converged", arch, *converge, *extra] for name, arch, *extra in
                 (line.split()[1:] for line in text.splitlines() if re.match(r"^\s*converged [a-z]", line))]


def test_zfnet64_is_the_reference_recipe_at_10_epochs():
  base, ref = ablation.get_config(), reference.get_config()
  differ = sorted(key for key in ref if ref[key] != base[key])
  assert differ == ["keep_epochs", "num_epochs", "stop_when_converged"]
  assert base.num_epochs == 10 and 10 in ref.keep_epochs and not base.stop_when_converged


def test_the_converged_runs_are_the_reference_recipe():
  """The -converged runs' options turn the common budget back into configs/reference.py's."""
  converged = [run for run in _script_runs() if run[0].endswith("-converged")]
  assert len(converged) == 10  # the two depth rows; seeds 1, 2 of them and of the base; seed 0 again (issue 23)
  for name, arch, *opts in converged:
    options = dict(option.removeprefix("--config.").split("=") for option in opts)
    config, ref = ablation.get_config(arch), reference.get_config()
    config.num_epochs, config.stop_when_converged = int(options["num_epochs"]), options["stop_when_converged"] == "True"
    config.seed = int(options.get("seed", config.seed))
    differ = sorted(key for key in ref if ref[key] != config[key])
    expected = {"keep_epochs"} | ({"arch", "layer_weight_std"} if arch != "zfnet64" else set()) | (
        {"seed"} if "seed" in options else set())
    assert differ == sorted(expected), name


@pytest.mark.parametrize("arch", ["zfnet64-no-conv34", "zfnet64-no-fc67", "zfnet64-fc-half", "zfnet64-fc-double",
                                  "zfnet64-wide-conv345", "zfnet64-no-conv34-fc67", "alexnet64"])
def test_each_variant_keeps_the_gain_of_its_full_size_layers(arch):
  config = ablation.get_config(arch)
  built = train_lib.build_arch(config)
  assert built.name == arch and config.num_epochs == 10
  assert set(train_lib.per_layer_values(config, built, "weight_std")) == set(built.activation_names)
  assert dict(config.layer_weight_std) == train_lib.paper_gain_std(built, models.get_arch(ablation.full_size(arch)))


def test_the_script_runs_the_docstring_table():
  runs = _script_runs()
  assert len(runs) == 20 and len({name for name, *_ in runs}) == 20
  for name, arch, *options in runs:
    assert arch in models.ARCH_NAMES
    listed = re.escape(" ".join(options)) + ("|\\(the same options\\)" if name.endswith("-converged") else "")
    assert re.search(rf"^  {re.escape(name)} +{re.escape(arch)} +({listed})", ablation.__doc__, re.M), name
    assert f"$R/{name}" in ablation.__doc__ or f"$D/{name}" in ablation.__doc__  # used by a visualize.py command
