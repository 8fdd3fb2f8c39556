"""What several test modules share: visualize.py run in this process, and a small ImageFolder."""
import os
import sys

from absl import flags
from PIL import Image

from zf_jax.data import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import visualize  # noqa: E402


def run_visualize(*args: str) -> int:
  """visualize.main in this process with `args` parsed as its flags; returns the exit code."""
  flags.FLAGS.unparse_flags()
  argv = flags.FLAGS(["visualize.py", *args])
  try:
    visualize.main(argv)
    return 0
  except SystemExit as e:
    return e.code


def write_synthetic_folder(folder: str, num_images: int) -> None:
  """An ImageFolder `folder/validation/<class>/<i>.png` of the first synthetic validation images."""
  for i in range(num_images):
    image, label = synthetic.draw(0, "validation", i)
    os.makedirs(os.path.join(folder, "validation", synthetic.CLASS_NAMES[label]), exist_ok=True)
    Image.fromarray(image).save(os.path.join(folder, "validation", synthetic.CLASS_NAMES[label], f"{i}.png"))
