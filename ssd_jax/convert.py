"""Pretrained PyTorch weights -> orbax checkpoints that ssd_jax restores.

  python -m ssd_jax.convert --format=vgg16 --input=vgg16-397923af.pth --output=/tmp/vgg16
  python -m ssd_jax.convert --format=reduced_vgg --input=vgg16_reducedfc.pth --output=/tmp/reduced_vgg
  python -m ssd_jax.convert --format=torchvision_ssd300 --input=ssd300_vgg16_coco-b556d3b4.pth --output=/tmp/tv_ssd300
  python -m ssd_jax.convert --format=torchvision_ssdlite320 --input=ssdlite320_mobilenet_v3_large_coco-a79551df.pth --output=/tmp/tv_ssdlite
  python -m ssd_jax.convert --format=mobilenet_v3_large --input=mobilenet_v3_large-8738ca79.pth --output=/tmp/mobilenet_v3

Formats are the converters of the model families (ssd_jax/models/, each
family module's CONVERTERS; `--help` lists them with what each reads), from
PyTorch state dicts read with torch.load(weights_only=True). A detector's
format comes with a config reproducing its publisher's default boxes,
preprocessing and post-processing, so the same weights give the same
detections; a base's initialises training.

The output folder holds `checkpoints/0` ({'params': ...} and, for BatchNorm
models, 'batch_stats') and `conversion.json`
(what was converted, from which file); a detector also gets `config.json`, so
`--mode=eval`/`predict` and `Detector.from_checkpoint(output)` need nothing
else. A base initialises training with `--config.model.init_checkpoint=OUTPUT`.
torch is needed only to read .pth files: `pip install -e ".[convert]"`.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Optional, Sequence

from ssd_jax import startup

if __name__ == '__main__':
  startup.begin()  # for the imports below and torch's in main

import flax  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402
from absl import app, flags  # noqa: E402

from ssd_jax import builders, models, workdirs  # noqa: E402
from ssd_jax.models import torch_weights  # noqa: E402
from ssd_jax.task import Task  # noqa: E402



def formats() -> dict:
  """--format name -> models.ssd.Converter, over every model family."""
  return models.converters()


def read_state_dict(path: str, fmt: str) -> torch_weights.StateDict:
  """A .pth file -> StateDict; unwraps {'state_dict': ...} / {'model': ...} and
  DataParallel's 'module.' prefixes."""
  try:
    import torch
  except ImportError as e:
    raise ImportError('reading PyTorch files needs torch: pip install -e ".[convert]" '
                      '(or pip install torch).') from e
  if not os.path.isfile(path):
    raise FileNotFoundError(f'--input={path} does not exist; give the .pth file to convert.')
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # torch raises many types for a bad file
    raise ValueError(f'cannot read {path} as a PyTorch state dict ({type(e).__name__}: {e}); '
                     f'save one with torch.save(model.state_dict(), path).') from e
  for wrapper in ('state_dict', 'model'):
    if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
      obj = obj[wrapper]
  if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
    raise ValueError(f'{path} holds a {type(obj).__name__}, not a state dict of tensors; '
                     f'save one with torch.save(model.state_dict(), path).')
  tensors = {k.removeprefix('module.'): v.detach().float().numpy()
             for k, v in obj.items() if isinstance(v, torch.Tensor)}
  return torch_weights.StateDict(tensors, path, f'the {fmt!r} format')


def _name(key: tuple) -> str:
  """A variable's path: parameters as 'backbone/conv1_1/kernel', statistics as
  'batch_stats/...'."""
  return '/'.join(key[1:] if key[0] == 'params' else key)


def check_shapes(variables: dict, task, source: str, whole: bool) -> None:
  """Every converted variable ({'params', maybe 'batch_stats'}) must exist in the
  task's model with the same shape; with `whole`, every model variable must
  have been converted."""
  expected = flax.traverse_util.flatten_dict(task.abstract_variables)
  got = flax.traverse_util.flatten_dict(variables)
  for key, value in got.items():
    name = _name(key)
    if key not in expected:
      raise ValueError(f'{source}: converted parameter {name} is not in the model.')
    if tuple(value.shape) != tuple(expected[key].shape):
      raise ValueError(f'{source}: {name} converts to shape {tuple(value.shape)} but the model '
                       f'needs {tuple(expected[key].shape)}; is --format right?')
  missing = sorted(_name(k) for k in expected.keys() - got.keys())
  if whole and missing:
    raise ValueError(f'{source}: no weights for {missing}.')


def check_output(output: str) -> str:
  """The absolute output folder, which must be new or empty (nothing is overwritten)."""
  output = os.path.abspath(output)
  if os.path.isdir(output) and os.listdir(output):
    raise FileExistsError(f'--output={output} is not empty; give a new folder (nothing there '
                          f'was changed).')
  return output


def save(output: str, variables: dict, info: dict, config=None) -> str:
  """Writes output/checkpoints/0 with the variables ({'params': ...}, plus
  'batch_stats' for BatchNorm models; bare parameters are wrapped, see
  builders.inference_variables), conversion.json and (for a detector)
  config.json. Refuses a non-empty output folder."""
  output = check_output(output)
  os.makedirs(output, exist_ok=True)
  with ocp.CheckpointManager(os.path.join(output, 'checkpoints')) as mngr:
    mngr.save(0, args=ocp.args.StandardSave(builders.inference_variables(variables)))
    mngr.wait_until_finished()
  if config is not None:
    workdirs.save_config(config, output)
  with open(os.path.join(output, 'conversion.json'), 'w') as f:
    json.dump(info, f, indent=2)
  return output


def sha256(path: str) -> str:
  """The SHA-256 of a file, in hex."""
  with open(path, 'rb') as f:
    return hashlib.file_digest(f, 'sha256').hexdigest()


def convert(fmt: str, path: str, output: str, channel_order: str = 'bgr',
            mean_rgb: Optional[Sequence[float]] = None) -> str:
  """Converts the state dict at `path` (a format of formats()) into `output`.

  channel_order: reduced_vgg's input order; mean_rgb: the input mean the vgg16
  base is folded for (default pixels.MEAN_RGB, the training configs').
  Returns the output folder.
  """
  if fmt not in formats():
    raise ValueError(f'--format={fmt!r} is not one of {sorted(formats())}.')
  converter = formats()[fmt]
  check_output(output)
  sd = read_state_dict(path, fmt)
  variables, facts = converter.load(sd, {'channel_order': channel_order, 'mean_rgb': mean_rgb})
  info = {'format': fmt, 'input': os.path.abspath(path), 'sha256': sha256(path), **facts}
  config = converter.config() if converter.config else None
  check_shapes(variables, Task.of(config or converter.base()), path, whole=config is not None)
  return save(output, variables, info, config)


def format_help() -> str:
  """--format's help: each format of every family, a detector or a base, and what it reads."""
  lines = [f'  {name} ({c.kind}): {c.about}'
           for name, c in sorted(formats().items())]
  return '\n'.join(['What --input holds:', *lines])


def define_flags() -> None:
  """The command's flags; defined only when it runs (ssd_jax.main imports this
  module for published weights, and has an --input flag of its own)."""
  flags.DEFINE_enum('format', None, sorted(formats()), format_help())
  flags.DEFINE_string('input', None, 'The PyTorch .pth state dict.')
  flags.DEFINE_string('output', None, 'New folder for the orbax checkpoint.')
  flags.DEFINE_enum('channel_order', 'bgr', ('bgr', 'rgb'),
                    'reduced_vgg: the channel order its conv1_1 was trained on.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  startup.quiet_libraries()
  f = flags.FLAGS
  try:
    import torch  # noqa: F401  (reads the .pth files)
  except ImportError:
    pass  # read_state_dict says what to install
  startup.done()
  out = convert(f.format, f.input, f.output, f.channel_order)
  use = ('--mode=eval/predict --workdir=' if formats()[f.format].config
         else '--config.model.init_checkpoint=')
  print(f'wrote {out}; use it with {use}{out}')


if __name__ == '__main__':
  define_flags()
  flags.mark_flags_as_required(['format', 'input', 'output'])
  app.run(main)
