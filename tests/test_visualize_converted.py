"""`visualize.py all` on converted ImageNet models (random weights, offline): the full report.

The state_dicts are random numpy arrays in the PyTorch layouts (pytorchcv's ZFNet, torchvision's VGG16),
converted by the same `convert.convert_state_dict` the CLI uses, so no torch is needed.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from zf_jax import checkpoint, convert, models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_state_dict(source: str, seed: int = 0) -> dict[str, np.ndarray]:
  """He-initialised weights of `source`'s PyTorch layout (OIHW convs, [out, in] fc)."""
  spec = convert.get_source(source)
  rng = np.random.default_rng(seed)
  state = {}
  for name, shapes in models.param_shapes(spec.arch, 1000).items():
    kernel = shapes["kernel"]
    torch_shape = (kernel[3], kernel[2], kernel[0], kernel[1]) if len(kernel) == 4 else (kernel[1], kernel[0])
    fan_in = int(np.prod(torch_shape[1:]))
    state[f"{spec.keys[name]}.weight"] = rng.normal(0, np.sqrt(2 / fan_in), torch_shape).astype(np.float32)
    state[f"{spec.keys[name]}.bias"] = rng.uniform(-0.1, 0.1, torch_shape[:1]).astype(np.float32)
  return state


@pytest.mark.slow
@pytest.mark.parametrize("source,extra", [("pytorchcv:zfnet", []),
                                          ("torchvision:vgg16", ["--layers=conv2,conv7,conv13", "--num_maps=4"])])
def test_visualize_all_on_a_converted_model(tmp_path, source, extra):
  path = str(tmp_path / "model.npz")
  checkpoint.save_params_npz(path, convert.convert_state_dict(source, random_state_dict(source)))
  import skimage.data
  photos = []
  for name in ("astronaut", "chelsea", "coffee"):
    photos.append(str(tmp_path / f"{name}.png"))
    Image.fromarray(getattr(skimage.data, name)()).save(photos[-1])
  out = tmp_path / "figures"
  run = subprocess.run([sys.executable, "visualize.py", "all", f"--params={path}", f"--images={','.join(photos)}",
                        "--k=3", f"--out={out}", *extra], cwd=ROOT, capture_output=True, text=True, timeout=3000)
  assert run.returncode == 0, run.stderr[-3000:]
  files = set(os.listdir(out))
  for name in ("topk", "invariance", "filters", "occlusion", "correspondence"):
    assert f"{name}.json" in files, (name, sorted(files))
  assert "index.html" in files and "topk_conv2.png" in files and "occlusion.png" in files
  html = (out / "index.html").read_text()
  assert "Fig. 7" in html
  import json
  occlusion = json.loads((out / "occlusion.json").read_text())
  assert any(name in json.dumps(occlusion) for name in convert.imagenet_class_names()[:1000])  # labels as words
