"""The workdir through one path layer (gs:// as well as local), and the run lock
where the store has no flock (a lease)."""
import json
import threading
import time

import numpy as np
import pytest
from etils.epath import gpath, testing as epath_testing

from ssd_jax import evaluate, paths, train_loop, workdirs


@pytest.fixture
def fake_bucket(tmp_path, monkeypatch):
  """gs://bucket/... served from tmp_path/bucket through etils.epath's backend: a
  file reached any other way (open, os.*) is not there."""
  root = tmp_path / 'bucket'
  root.mkdir()
  monkeypatch.setattr(gpath, '_is_tf_installed', lambda: False)  # use the mockable backend

  def local(path):
    text = str(path)
    assert text.startswith('gs://bucket'), text
    return str(root) + text[len('gs://bucket'):]

  def on_path(original, path, *args, **kwargs):
    return original(local(path), *args, **kwargs)

  def two_paths(original, path, dst, *args, **kwargs):
    return original(local(path), local(dst), *args, **kwargs)

  names = ('exists', 'glob', 'isdir', 'listdir', 'makedirs', 'mkdir', 'open', 'remove',
           'rmtree', 'stat', 'walk')
  mocks = {n: on_path for n in names}
  mocks.update(rename=two_paths, replace=two_paths, copy=two_paths)
  with epath_testing.mock_epath(**mocks):
    yield root


def test_url_and_local_paths():
  assert paths.is_url('gs://b/run') and not paths.is_url('/tmp/run')
  assert str(paths.path('gs://b/run') / 'config.json') == 'gs://b/run/config.json'
  assert str(paths.path('relative')).startswith('/')


def test_a_bucket_workdir_holds_the_runs_files(fake_bucket, load_config):
  workdir = 'gs://bucket/runs/a'
  train_loop.check_workdir(workdir)
  assert (fake_bucket / 'runs' / 'a').is_dir() and not list((fake_bucket / 'runs' / 'a').iterdir())
  config = load_config('voc300')
  workdirs.save_config(config, workdir)
  assert json.loads((fake_bucket / 'runs/a/config.json').read_text())['model']['image_size'] == 300
  assert workdirs.find_config(workdir).to_dict() == config.to_dict()
  result = {'metric': 'voc07', 'headline': 'mAP', 'scalars': {'mAP': 0.5},
            'per_class_AP': {'a': 0.5}, 'curves': {'a': (np.array([0, 1.0]), np.array([1.0, 0]))},
            'num_images': 1}
  evaluate.report(result, evaluate.eval_dir(workdir, 7), 7)
  saved = json.loads((fake_bucket / 'runs/a/eval_7/metrics.json').read_text())
  assert saved['step'] == 7 and saved['scalars'] == {'mAP': 0.5}
  assert (fake_bucket / 'runs/a/eval_7/pr_curves.png').read_bytes()[:4] == b'\x89PNG'
  with workdirs.workdir_lock(workdir) as lock:  # no flock on a bucket: the lease
    assert isinstance(lock, workdirs.Lease)
    held = json.loads((fake_bucket / 'runs/a/lock').read_text())
    assert held['token'] == lock.token and 'process' in held['holder']
  assert not (fake_bucket / 'runs/a/lock').exists()


def lease(workdir, **kwargs):
  options = dict(renew_s=0.1, lease_s=2.0, settle_s=0.2)
  options.update(kwargs)
  return workdirs.Lease(str(workdir), **options)


def test_a_lease_refuses_a_second_run_and_is_released(tmp_path):
  first = lease(tmp_path).acquire()
  with pytest.raises(workdirs.WorkdirInUseError, match='in use by process .* lease runs'):
    lease(tmp_path).acquire()
  time.sleep(0.5)  # renewed meanwhile: still refused
  with pytest.raises(workdirs.WorkdirInUseError):
    lease(tmp_path).acquire()
  first.release()
  assert not (tmp_path / 'lock').exists()
  lease(tmp_path).acquire().release()


def test_a_dead_runs_lease_expires_and_is_taken_over(tmp_path):
  (tmp_path / 'lock').write_text(json.dumps(
      {'holder': 'a killed run', 'token': 'x', 'renewed': time.time() - 3.0, 'lease_s': 2.0}))
  taken = lease(tmp_path).acquire()
  assert json.loads((tmp_path / 'lock').read_text())['token'] == taken.token
  taken.release()


@pytest.mark.parametrize('trial', range(10))
def test_of_runs_starting_at_once_one_holds_the_lease(tmp_path, trial):
  """Eight runs released at one instant: their writes overlap, and exactly one
  may end up holding the lease (a torn lock file once left none)."""
  outcomes, start_line = [], threading.Barrier(8)

  def start():
    candidate = lease(tmp_path, settle_s=0.3, lease_s=5.0)
    start_line.wait()
    try:
      outcomes.append(candidate.acquire())
    except workdirs.WorkdirInUseError as e:
      outcomes.append(e)

  threads = [threading.Thread(target=start) for _ in range(8)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  held = [o for o in outcomes if isinstance(o, workdirs.Lease)]
  assert len(outcomes) == 8 and len(held) == 1, [type(o).__name__ for o in outcomes]
  assert json.loads((tmp_path / 'lock').read_text())['token'] == held[0].token
  held[0].release()


def test_a_holder_whose_lease_was_taken_stops_before_saving(tmp_path):
  holder = lease(tmp_path).acquire()
  holder.check()
  (tmp_path / 'lock').write_text(json.dumps(
      {'holder': 'the other run', 'token': 'y', 'renewed': time.time(), 'lease_s': 2.0}))
  time.sleep(0.4)  # its next renewal finds the other token
  with pytest.raises(workdirs.WorkdirInUseError, match='the other run.*without saving'):
    holder.check()
  holder.release()
  assert json.loads((tmp_path / 'lock').read_text())['token'] == 'y'  # not removed
