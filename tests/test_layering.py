"""Every import inside zf_jax points down the layers (or sideways within one):

files -> layers -> models -> deconv / data / checkpoint / metrics -> train / evaluation / pretrained
-> analysis -> report -> explore -> the CLIs (train.py, visualize.py).

Function-level imports count too: a lazy import is no way around the order.
"""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "zf_jax"

# Module name prefixes and their layer; the longest matching prefix decides.
LAYERS = {
    "zf_jax.files": 0,
    "zf_jax.layers": 1,
    "zf_jax.models": 2,
    "zf_jax.deconv": 3, "zf_jax.data": 3, "zf_jax.checkpoint": 3, "zf_jax.metrics": 3, "zf_jax.linen": 3,
    "zf_jax.convert": 3, "zf_jax.input_pipeline": 3,
    "zf_jax.train_lib": 4, "zf_jax.evaluation": 4, "zf_jax.pretrained": 4, "zf_jax.run_record": 4,
    "zf_jax.analysis": 5,
    "zf_jax.report": 6,
    "zf_jax.explore": 7,
    "zf_jax": 8,  # the package itself: re-exports for users
}


def _layer(module: str) -> int:
  matches = [prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")]
  if not matches:
    raise AssertionError(f"{module} has no layer in tests/test_layering.py: add it to LAYERS")
  return LAYERS[max(matches, key=len)]


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(source: str) -> set[str]:
  """The zf_jax modules a file imports (`from zf_jax.x import y` counts as zf_jax.x.y where y is a module)."""
  found = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "zf_jax":
      for alias in node.names:
        sub = f"{node.module}.{alias.name}"
        is_module = (ROOT.parent / (sub.replace(".", "/") + ".py")).exists() or \
            (ROOT.parent / sub.replace(".", "/")).is_dir()
        found.add(sub if is_module else node.module)
    elif isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "zf_jax")
  return found


FILES = sorted(ROOT.rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(ROOT.parent)) for p in FILES])
def test_imports_point_down(path):
  module = _module_name(path)
  deps = sorted(_imports(path.read_text()))
  upward = [f"{dep} (layer {_layer(dep)})" for dep in deps if _layer(dep) > _layer(module)]
  assert not upward, f"{module} (layer {_layer(module)}) imports from a layer above it: {', '.join(upward)}"


def test_the_check_catches_a_lazy_upward_import():
  source = (ROOT / "layers.py").read_text() + "\n\ndef _late():\n  from zf_jax.analysis import common\n"
  assert "zf_jax.analysis.common" in _imports(source)
  assert _layer("zf_jax.analysis.common") > _layer("zf_jax.layers")
