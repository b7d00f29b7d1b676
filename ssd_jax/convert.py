"""Pretrained PyTorch weights -> orbax checkpoints that ssd_jax restores.

  python -m ssd_jax.convert --format=vgg16 --input=vgg16-397923af.pth --output=/tmp/vgg16
  python -m ssd_jax.convert --format=reduced_vgg --input=vgg16_reducedfc.pth --output=/tmp/reduced_vgg
  python -m ssd_jax.convert --format=torchvision_ssd300 --input=ssd300_vgg16_coco-b556d3b4.pth --output=/tmp/tv_ssd300
  python -m ssd_jax.convert --format=torchvision_ssdlite320 --input=ssdlite320_mobilenet_v3_large_coco-a79551df.pth --output=/tmp/tv_ssdlite
  python -m ssd_jax.convert --format=mobilenet_v3_large --input=mobilenet_v3_large-8738ca79.pth --output=/tmp/mobilenet_v3

Formats (PyTorch state dicts, read with torch.load(weights_only=True)):
  vgg16: torchvision's ImageNet VGG16. conv1_1..conv5_3 are copied; fc6 and fc7
    are subsampled into conv6 (3x3, dilation 6) and conv7 (1x1) as the paper's
    authors did (see vgg16_base). torchvision's VGG takes RGB in [0, 1] normalised by
    the ImageNet mean and std; conv1_1 is rescaled (and its bias shifted) so the
    base takes ssd_jax's input, RGB pixels minus data.mean_rgb.
  reduced_vgg: the `vgg16_reducedfc.pth` layout (keys '0.weight' ... '33.bias',
    optionally under 'vgg.'): conv6 and conv7 already reduced. It comes from
    Caffe, which reads BGR: conv1_1's input channels are reversed to take RGB
    (channel_order='rgb' keeps them as they are).
  torchvision_ssd300: torchvision's `ssd300_vgg16` COCO detector, with the
    config `recipes.torchvision_ssd300()` reproducing its default boxes,
    clipping, preprocessing and post-processing, so the same weights give the
    same detections. Its 91 classes are COCO category ids (0 background, ten
    ids unused); here classes 1..80 are COCO's 80 in label order, as the TFDS
    pipeline numbers them, and the ten unused ids follow.
  torchvision_ssdlite320: torchvision's `ssdlite320_mobilenet_v3_large` COCO
    detector (parameters and BatchNorm statistics; ssd_jax/ssdlite.py maps its
    layers), with `recipes.torchvision_ssdlite320()`; classes as above.
  mobilenet_v3_large: torchvision's ImageNet MobileNetV3-Large (its features,
    full tail), to fine-tune SSDLite from: train with
    --config.backbone.reduced_tail=False (torchvision's layout with an ImageNet
    base). The extra blocks and the head start fresh.

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
from typing import Mapping, Optional, Sequence

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags

from ssd_jax import builders, config_lib, labels, models, recipes, ssdlite, workdirs

FORMATS = ('vgg16', 'reduced_vgg', 'torchvision_ssd300', 'torchvision_ssdlite320',
           'mobilenet_v3_large')
DETECTORS = ('torchvision_ssd300', 'torchvision_ssdlite320')

# conv1_1 ... conv5_3 and their indices in torchvision's vgg16.features (the
# same indices as the reduced-VGG ModuleList; conv6, conv7 follow there at 31, 33).
VGG_CONVS = models.layer_order('ssd300')[:13]
VGG_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
REDUCED_FC_INDICES = {'conv6': 31, 'conv7': 33}

# torchvision's ImageNet normalisation of [0, 1] RGB inputs for its VGG16.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Where the layers of torchvision's ssd300_vgg16 live in its state dict.
TV_LAYERS = {
    **{name: f'backbone.features.{i}' for name, i in zip(VGG_CONVS[:10], VGG_INDICES)},
    'conv5_1': 'backbone.extra.0.1', 'conv5_2': 'backbone.extra.0.3',
    'conv5_3': 'backbone.extra.0.5', 'conv6': 'backbone.extra.0.7.1',
    'conv7': 'backbone.extra.0.7.3',
    **{f'conv{8 + i}_{j + 1}': f'backbone.extra.{i + 1}.{2 * j}'
       for i in range(4) for j in range(2)},
}


class StateDict:
  """A PyTorch state dict as NumPy arrays, remembering its file for errors."""

  def __init__(self, tensors: Mapping[str, np.ndarray], source: str, fmt: str):
    self.tensors, self.source, self.format = dict(tensors), source, fmt

  def __getitem__(self, key: str) -> np.ndarray:
    if key not in self.tensors:
      sample = ', '.join(sorted(self.tensors)[:6])
      raise ValueError(f'{self.source} has no tensor {key!r}, which the {self.format!r} format '
                       f'needs (its keys begin: {sample}); check --format (one of {FORMATS}).')
    return self.tensors[key]

  def conv(self, prefix: str) -> dict:
    """'<prefix>.weight' [O, I, kh, kw] and '.bias' -> a Flax Conv's kernel [kh, kw, I, O], bias."""
    return conv_params(self[f'{prefix}.weight'], self[f'{prefix}.bias'])


def conv_params(weight: np.ndarray, bias: np.ndarray) -> dict:
  """PyTorch Conv2d weight f[O, I, kh, kw], bias f[O] -> Flax {'kernel' [kh, kw, I, O], 'bias'}."""
  return {'kernel': np.ascontiguousarray(np.transpose(weight, (2, 3, 1, 0)), np.float32),
          'bias': np.asarray(bias, np.float32)}


def read_state_dict(path: str, fmt: str) -> StateDict:
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
  return StateDict(tensors, path, fmt)


def fold_input_normalisation(conv1: dict, mean: Sequence[float], std: Sequence[float],
                             mean_rgb: Sequence[float]) -> dict:
  """conv1_1 trained on (pixel / 255 - mean) / std -> the same layer on pixel - mean_rgb.

  (p/255 - m)/s = (x + mean_rgb - 255 m) / (255 s) with x = p - mean_rgb: the
  kernel divides by 255 s per input channel and the bias absorbs the rest.
  Exact where the 3x3 window lies inside the image; at the border the zero
  padding differs by (mean_rgb - 255 m), under one grey level for the
  ImageNet mean and config_lib.MEAN_RGB.
  """
  scale = 1.0 / (255.0 * np.asarray(std, np.float64))
  kernel = conv1['kernel'] * scale[None, None, :, None]
  shift = np.asarray(mean_rgb, np.float64) - 255.0 * np.asarray(mean, np.float64)
  bias = conv1['bias'] + np.einsum('hwio,i->o', kernel, shift)
  return {'kernel': kernel.astype(np.float32), 'bias': bias.astype(np.float32)}


def vgg16_base(sd: StateDict, mean_rgb: Sequence[float] = config_lib.MEAN_RGB) -> dict:
  """torchvision ImageNet VGG16 -> backbone params conv1_1..conv7 (see the module doc).

  fc6 f[4096, 512*7*7] keeps every 4th output and every 3rd tap of its 7x7
  window (1024x512x3x3, used with dilation 6); fc7 f[4096, 4096] keeps every
  4th input and output (1024x1024x1x1).
  """
  params = {name: sd.conv(f'features.{i}') for name, i in zip(VGG_CONVS, VGG_INDICES)}
  params['conv1_1'] = fold_input_normalisation(params['conv1_1'], IMAGENET_MEAN, IMAGENET_STD,
                                               mean_rgb)
  fc6, fc7 = sd['classifier.0.weight'], sd['classifier.3.weight']
  if fc6.shape != (4096, 512 * 7 * 7) or fc7.shape != (4096, 4096):
    raise ValueError(f'{sd.source}: classifier.0 / classifier.3 weights are {fc6.shape} / '
                     f'{fc7.shape}, not VGG16\'s fc6 (4096, 25088) and fc7 (4096, 4096).')
  params['conv6'] = conv_params(fc6.reshape(4096, 512, 7, 7)[::4, :, ::3, ::3],
                                sd['classifier.0.bias'][::4])
  params['conv7'] = conv_params(fc7[::4, ::4, None, None], sd['classifier.3.bias'][::4])
  return params


def reduced_vgg_base(sd: StateDict, channel_order: str = 'bgr') -> dict:
  """vgg16_reducedfc.pth layout -> backbone params conv1_1..conv7."""
  if channel_order not in ('bgr', 'rgb'):
    raise ValueError(f'--channel_order={channel_order!r}: use "bgr" (Caffe-derived weights) '
                     f'or "rgb".')
  if '0.weight' not in sd.tensors and 'vgg.0.weight' in sd.tensors:
    sd = StateDict({k.removeprefix('vgg.'): v for k, v in sd.tensors.items()}, sd.source,
                   sd.format)
  indices = dict(zip(VGG_CONVS, VGG_INDICES), **REDUCED_FC_INDICES)
  params = {name: sd.conv(str(i)) for name, i in indices.items()}
  if channel_order == 'bgr':
    params['conv1_1']['kernel'] = np.ascontiguousarray(params['conv1_1']['kernel'][:, :, ::-1])
  return params


def permute_classes(conv: dict, order: Sequence[int]) -> dict:
  """A class head whose outputs are [box a, class k] -> the same with class j := order[j]."""
  kernel, bias = conv['kernel'], conv['bias']
  k = len(order)
  boxes = bias.shape[0] // k
  kernel = kernel.reshape(kernel.shape[:3] + (boxes, k))[..., list(order)]
  return {'kernel': kernel.reshape(kernel.shape[:3] + (boxes * k,)),
          'bias': bias.reshape(boxes, k)[:, list(order)].reshape(-1)}


def torchvision_ssd300(sd: StateDict) -> dict:
  """torchvision ssd300_vgg16 -> full detector params for recipes.torchvision_ssd300()."""
  backbone = {name: sd.conv(prefix) for name, prefix in TV_LAYERS.items()}
  backbone['conv4_3_norm'] = {'scale': sd['backbone.scale_weight'].astype(np.float32)}
  head = {}
  for i, source in enumerate(models.SSD300_SOURCES):
    head[f'{source}_loc'] = sd.conv(f'head.regression_head.module_list.{i}')
    head[f'{source}_conf'] = permute_classes(
        sd.conv(f'head.classification_head.module_list.{i}'), labels.TORCHVISION_CLASS_ORDER)
  return {'backbone': backbone, 'head': head}


def torchvision_ssdlite320(sd: StateDict) -> dict:
  """torchvision ssdlite320_mobilenet_v3_large -> its variables ({'params',
  'batch_stats'}) for recipes.torchvision_ssdlite320(), classes in ssd_jax's order."""
  variables = ssdlite.torchvision_ssdlite320_variables(sd.tensors, source=sd.source)
  head = variables['params']['head']
  for name in head:
    if name.startswith('cls_'):
      head[name]['project'] = permute_classes(head[name]['project'],
                                              labels.TORCHVISION_CLASS_ORDER)
  return variables


def base_config(fmt: str = 'vgg16'):
  """The architecture a base's shapes are checked against (any SSD at width 1)."""
  if fmt == 'mobilenet_v3_large':
    config = recipes.preset('ssdlite320', 'voc')
    config.backbone.reduced_tail = False  # ImageNet MobileNetV3's layout
    return config
  return recipes.preset('ssd300', 'voc')


def _name(key: tuple) -> str:
  """A variable's path: parameters as 'backbone/conv1_1/kernel', statistics as
  'batch_stats/...'."""
  return '/'.join(key[1:] if key[0] == 'params' else key)


def check_shapes(variables: dict, config, source: str, whole: bool) -> None:
  """Every converted variable ({'params', maybe 'batch_stats'}) must exist in the
  config's model with the same shape; with `whole`, every model variable must
  have been converted."""
  expected = flax.traverse_util.flatten_dict(
      jax.eval_shape(lambda: builders.init_variables(config, jax.random.key(0))))
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
  """Converts the state dict at `path` (a `fmt`, see FORMATS) into `output`.

  mean_rgb: the input mean the vgg16 base is folded for (default
  config_lib.MEAN_RGB, the training configs'). Returns the output folder.
  """
  if fmt not in FORMATS:
    raise ValueError(f'--format={fmt!r} is not one of {FORMATS}.')
  check_output(output)
  sd = read_state_dict(path, fmt)
  info = {'format': fmt, 'input': os.path.abspath(path), 'sha256': sha256(path)}
  config = None
  if fmt == 'torchvision_ssd300':
    config = recipes.torchvision_ssd300()
    variables = {'params': torchvision_ssd300(sd)}
  elif fmt == 'torchvision_ssdlite320':
    config = recipes.torchvision_ssdlite320()
    variables = torchvision_ssdlite320(sd)
  elif fmt == 'mobilenet_v3_large':
    variables = ssdlite.mobilenet_v3_large_variables(sd.tensors, source=sd.source)
  elif fmt == 'vgg16':
    info['mean_rgb'] = list(mean_rgb or config_lib.MEAN_RGB)
    variables = {'params': {'backbone': vgg16_base(sd, info['mean_rgb'])}}
  else:
    info['channel_order'] = channel_order
    variables = {'params': {'backbone': reduced_vgg_base(sd, channel_order)}}
  check_shapes(variables, config_lib.validate(config or base_config(fmt)), path,
               whole=config is not None)
  return save(output, variables, info, config)


def define_flags() -> None:
  """The command's flags; defined only when it runs (ssd_jax.main imports this
  module for published weights, and has an --input flag of its own)."""
  flags.DEFINE_enum('format', None, FORMATS, 'What --input holds (see the module doc).')
  flags.DEFINE_string('input', None, 'The PyTorch .pth state dict.')
  flags.DEFINE_string('output', None, 'New folder for the orbax checkpoint.')
  flags.DEFINE_enum('channel_order', 'bgr', ('bgr', 'rgb'),
                    'reduced_vgg: the channel order its conv1_1 was trained on.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  out = convert(f.format, f.input, f.output, f.channel_order)
  use = ('--mode=eval/predict --workdir=' if f.format in DETECTORS
         else '--config.model.init_checkpoint=')
  print(f'wrote {out}; use it with {use}{out}')


if __name__ == '__main__':
  define_flags()
  flags.mark_flags_as_required(['format', 'input', 'output'])
  app.run(main)
