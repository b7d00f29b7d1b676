"""PyTorch models made comparable: random BatchNorm statistics, NumPy state dicts.

For tests that check a converted network against the PyTorch one it came from
(needs torch: pip install -e ".[test]").
"""
import torch


def randomise_batch_norms(model, forward, x, seed):
  """Running stats from one train-mode forward(x) (activations stay O(1) through
  the net), then every BatchNorm's weight, bias, running mean and var perturbed."""
  bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  momenta = [m.momentum for m in bns]
  for m in bns:
    m.reset_running_stats()
    m.momentum = None  # cumulative average: one batch's statistics
  model.train()
  with torch.no_grad():
    forward(x)
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m, momentum in zip(bns, momenta):
      m.momentum = momentum
      c = m.num_features
      m.weight.copy_(torch.empty(c).uniform_(0.5, 1.5, generator=g))
      m.bias.copy_(torch.randn(c, generator=g) * 0.2)
      m.running_mean.add_(torch.randn(c, generator=g) * 0.1 * m.running_var.sqrt())
      m.running_var.mul_(torch.empty(c).uniform_(0.8, 1.25, generator=g))
  return model.eval()


def numpy_state_dict(model):
  return {k: v.detach().numpy() for k, v in model.state_dict().items()}
