"""Profile: SSD300's VGG layers one at a time, forward and gradients, under ssd_jax's
CPU compiler options and XLA's defaults.

  python experiments/bench_layer_grads.py [--batch 8] [--repeats 2]

For each convolution (at its SSD300 input size, batch 8): milliseconds of the
forward pass, the input gradient and the weight gradient compiled with
xla_cpu.OPTIONS['vgg16'] (XLA's own convolution kernels on CPU), the same three with XLA's
default options (YNNPACK's), and torch's forward + both gradients on the same
device; for the max pools, the forward, XLA's select-and-scatter gradient and
ssd_jax.layers' masked shifts. Where the train step's time goes, and what
xla_cpu.py and layers.py change.
"""
import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

from ssd_jax import layers, xla_cpu

import common  # experiments/common.py, beside this script

NHWC = ('NHWC', 'HWIO', 'NHWC')
# name, input side, input channels, output channels, dilation (3x3, pad = dilation)
CONVS = (('conv1_2', 300, 64, 64, 1), ('conv2_2', 150, 128, 128, 1),
         ('conv3_3', 75, 256, 256, 1), ('conv4_3', 38, 512, 512, 1),
         ('conv5_3', 19, 512, 512, 1), ('conv6', 19, 512, 1024, 6))
# name, input side, channels, window, stride, padding (after)
POOLS = (('pool1', 300, 64, 2, 2, 0), ('pool3', 75, 256, 2, 2, 1), ('pool5', 19, 512, 3, 1, 1))


def ms(fn, *args, repeats: int) -> float:
  """Milliseconds per call of fn(*args), after a warm-up call."""
  return common.seconds_per_call(lambda: fn(*args), repeats) * 1e3


def conv_row(batch, side, cin, cout, dil, repeats) -> dict:
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(batch, side, side, cin)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, cin, cout)) * 0.05, jnp.float32)
  pad = ((dil, dil), (dil, dil))
  conv = lambda x, w: jax.lax.conv_general_dilated(  # noqa: E731
      x, w, (1, 1), pad, rhs_dilation=(dil, dil), dimension_numbers=NHWC)
  g = jnp.ones_like(conv(x, w))
  parts = {'forward': conv,
           'input grad': lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0],
           'weight grad': lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0]}
  row = {}
  vgg = lambda fn: jax.jit(fn, compiler_options=xla_cpu.compiler_options('vgg16'))  # noqa: E731
  for suffix, jit in (('', vgg), (', XLA defaults', jax.jit)):
    for name, fn in parts.items():
      args = (x, w) if name == 'forward' else (x, w, g)
      row[name + suffix] = ms(jit(fn), *args, repeats=repeats)
  row['torch fwd+bwd'] = torch_conv_ms(np.asarray(x), np.asarray(w), dil, repeats)
  return row


def torch_conv_ms(x, w, dil, repeats) -> float:
  """torch's 3x3 convolution forward and both gradients, NCHW."""
  import torch
  tx = torch.tensor(x.transpose(0, 3, 1, 2).copy(), requires_grad=True)
  tw = torch.tensor(w.transpose(3, 2, 0, 1).copy(), requires_grad=True)

  def step():
    out = torch.nn.functional.conv2d(tx, tw, padding=dil, dilation=dil)
    torch.autograd.grad(out, (tx, tw), torch.ones_like(out))
    return jnp.zeros(())

  return ms(step, repeats=repeats)


def pool_row(batch, side, channels, window, stride, pad, repeats) -> dict:
  import torch
  x = jnp.asarray(np.random.default_rng(0).normal(size=(batch, side, side, channels)),
                  jnp.float32)
  padding = ((pad if stride == 1 else 0, pad),) * 2
  pool = lambda x: layers.max_pool(x, (window,) * 2, (stride,) * 2, padding)  # noqa: E731
  grad = jax.jit(lambda x: jax.vjp(pool, x)[1](jnp.ones_like(pool(x)))[0])
  row = {'forward': ms(jax.jit(pool), x, repeats=repeats)}
  layers.USE_CPU_GRADIENTS = False
  row['grad XLA'] = ms(jax.jit(lambda x: jax.vjp(pool, x)[1](jnp.ones_like(pool(x)))[0]), x,
                       repeats=repeats)
  layers.USE_CPU_GRADIENTS = True
  row['grad ours'] = ms(grad, x, repeats=repeats)
  tx = torch.tensor(np.asarray(x).transpose(0, 3, 1, 2).copy(), requires_grad=True)

  def step():
    out = torch.nn.functional.max_pool2d(tx, window, stride, padding=pad if stride == 1 else 0,
                                         ceil_mode=True)
    torch.autograd.grad(out, tx, torch.ones_like(out))
    return jnp.zeros(())

  row['torch fwd+bwd'] = ms(step, repeats=repeats)
  return row


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--repeats', type=int, default=2)
  args = parser.parse_args()
  print(f'device: {jax.devices()[0].device_kind}; jax {jax.__version__}; batch {args.batch}; ms')
  for i, (name, side, cin, cout, dil) in enumerate(CONVS):
    r = conv_row(args.batch, side, cin, cout, dil, args.repeats)
    if i == 0:
      print('| layer | ' + ' | '.join(r) + ' |\n|---|' + '---:|' * len(r))
    print(f'| {name} | ' + ' | '.join(f'{v:.0f}' for v in r.values()) + ' |', flush=True)
  print('\n| layer | forward | grad XLA | grad ours | torch fwd+bwd |')
  print('|---|---:|---:|---:|---:|')
  for name, side, c, window, stride, pad in POOLS:
    r = pool_row(args.batch, side, c, window, stride, pad, args.repeats)
    print(f'| {name} | ' + ' | '.join(f'{v:.0f}' for v in r.values()) + ' |', flush=True)


if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  main()
