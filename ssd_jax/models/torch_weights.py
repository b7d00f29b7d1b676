"""PyTorch state dicts as NumPy arrays, and the pieces every converter shares.

Flax and PyTorch differ in layout only: a conv weight f[O, I/groups, kh, kw]
is a Flax kernel f[kh, kw, I/groups, O]; BatchNorm's weight, bias,
running_mean and running_var are Flax's scale, bias (params) and mean, var
(batch_stats). Nothing here imports torch (convert.read_state_dict does).
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import numpy as np


class StateDict:
  """A state dict of NumPy arrays whose missing keys fail with a readable error.

  source: the file it came from; what: what reads it (named in errors).
  """

  def __init__(self, tensors: Mapping[str, Any], source: str = 'the state dict',
               what: str = 'the conversion'):
    self.tensors = {k: np.asarray(v) for k, v in tensors.items()}
    self.source, self.what = source, what

  def __getitem__(self, key: str) -> np.ndarray:
    if key not in self.tensors:
      sample = ', '.join(sorted(self.tensors)[:6])
      raise ValueError(f'{self.source} has no tensor {key!r}, which {self.what} needs (its '
                       f'keys begin: {sample}); is it the right file and --format?')
    return self.tensors[key]

  def __contains__(self, key: str) -> bool:
    return key in self.tensors

  def renamed(self, tensors: Mapping[str, Any]) -> 'StateDict':
    """Other tensors (the same ones under other keys), with this one's source and reader."""
    return StateDict(tensors, self.source, self.what)

  def indices(self, prefix: str) -> list[int]:
    """The sorted integers i of the keys '<prefix>.<i>.*'."""
    pattern = re.compile(re.escape(prefix) + r'\.(\d+)\.')
    return sorted({int(m.group(1)) for k in self.tensors if (m := pattern.match(k))})

  def conv(self, prefix: str) -> dict:
    """'<prefix>.weight' and '.bias' -> a Flax Conv's {'kernel', 'bias'}."""
    return conv_params(self[f'{prefix}.weight'], self[f'{prefix}.bias'])


def kernel(weight: np.ndarray) -> np.ndarray:
  """torch conv weight f[O, I/groups, kh, kw] -> Flax f32[kh, kw, I/groups, O]
  (a depthwise [C, 1, kh, kw] becomes [kh, kw, 1, C])."""
  return np.ascontiguousarray(np.transpose(weight, (2, 3, 1, 0)), np.float32)


def conv_params(weight: np.ndarray, bias: np.ndarray) -> dict:
  """PyTorch Conv2d weight f[O, I, kh, kw], bias f[O] -> Flax {'kernel' [kh, kw, I, O], 'bias'}."""
  return {'kernel': kernel(weight), 'bias': np.asarray(bias, np.float32)}


def variables(params: dict, stats: dict) -> dict:
  return {'params': params, 'batch_stats': stats}


def merge(named: Mapping[str, dict]) -> dict:
  """{name: {'params', 'batch_stats'}} -> {'params': {name: ...}, 'batch_stats': {...}}
  (modules without statistics get no batch_stats entry)."""
  return variables({n: v['params'] for n, v in named.items()},
                   {n: v['batch_stats'] for n, v in named.items() if v['batch_stats']})


def conv(sd: StateDict, prefix: str) -> dict:
  """A conv with bias '<prefix>' -> a Flax Conv's variables."""
  return variables(sd.conv(prefix), {})


def conv_bn(sd: StateDict, conv_key: str, bn_key: str) -> dict:
  """A conv without bias and its BatchNorm -> layers.ConvBN's variables
  ({'conv': {'kernel'}, 'bn': {'scale', 'bias'}} and the statistics)."""
  f32 = lambda key: np.asarray(sd[f'{bn_key}.{key}'], np.float32)  # noqa: E731
  return variables(
      {'conv': {'kernel': kernel(sd[f'{conv_key}.weight'])},
       'bn': {'scale': f32('weight'), 'bias': f32('bias')}},
      {'bn': {'mean': f32('running_mean'), 'var': f32('running_var')}})


def permute_classes(conv_params_: dict, order: Sequence[int]) -> dict:
  """A class head whose outputs are [box a, class k] -> the same with class j := order[j]."""
  k_, bias = conv_params_['kernel'], conv_params_['bias']
  k = len(order)
  boxes = bias.shape[0] // k
  k_ = k_.reshape(k_.shape[:3] + (boxes, k))[..., list(order)]
  return {'kernel': k_.reshape(k_.shape[:3] + (boxes * k,)),
          'bias': bias.reshape(boxes, k)[:, list(order)].reshape(-1)}

