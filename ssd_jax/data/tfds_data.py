"""Finding, preparing and opening TFDS datasets, whichever way the data dir is given.

A data dir comes from `data.data_dir`, else TFDS's own choice: the
`TFDS_DATA_DIR` variable, else `~/tensorflow_datasets`. `where(data_dir)` is
that folder, so every message names the folder TFDS really looks in.

Datasets ssd_jax makes itself (the generated `ssd_shapes`) are prepared by
one process at a time: the holder of an flock on
`<data dir>/.ssd_jax_prepare.lock`. A second process on the machine (or on
another host sharing the folder) waits for the lock, then finds the dataset
prepared and reads it. On a cluster the training loop lets host 0 prepare
before the other hosts open anything (train_loop._start), so no two hosts
ever write one dataset. Datasets TFDS downloads (VOC, COCO) are prepared by
the user, once, with the command `prepare_command` prints; until then
opening them raises FileNotFoundError holding that command.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging as std_logging
import os
from typing import Optional

import tensorflow_datasets as tfds
from absl import logging

from ssd_jax import paths
from ssd_jax.data import shapes_dataset

LOCK_NAME = '.ssd_jax_prepare.lock'


class PreparationFailed(RuntimeError):
  """Generating a built-in dataset failed; the message names the dataset and folder."""


def where(data_dir: Optional[str]) -> str:
  """The folder TFDS reads: `data_dir`, else TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  if data_dir:
    return data_dir
  return os.path.expanduser(os.environ.get('TFDS_DATA_DIR') or tfds.core.constants.DATA_DIR)


def is_built_in(name: str) -> bool:
  """Whether ssd_jax generates `name` itself (no download): `ssd_shapes[/config]`."""
  return name.split('/')[0] == shapes_dataset.NAME


def prepare_command(name: str, data_dir: Optional[str]) -> str:
  """The one command that prepares `name` as ArrayRecord in the folder TFDS reads."""
  return (f'python -c "import tensorflow_datasets as tfds; tfds.builder(\'{name}\', '
          f'data_dir={where(data_dir)!r}, file_format=\'array_record\').download_and_prepare()"')


@contextlib.contextmanager
def prepare_lock(data_dir: Optional[str]):
  """Holds an flock on <data dir>/LOCK_NAME (waiting for it); a no-op on URLs,
  which have no flock (there, preparation is host 0's alone)."""
  folder = where(data_dir)
  if paths.is_url(folder):
    yield
    return
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, LOCK_NAME), 'a+') as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      logging.info('another process is preparing data in %s; waiting for it', folder)
      print(f'waiting for another process to finish preparing data in {folder}', flush=True)
      fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def prepare_built_in(name: str, data_dir: Optional[str]) -> None:
  """Generates a built-in dataset unless it is on disk; one process at a time.

  Raises:
    PreparationFailed naming the dataset and folder when generating it fails.
  """
  if not is_built_in(name):
    return
  try:
    builder = tfds.builder(name, data_dir=data_dir, file_format='array_record')
    if builder.is_prepared():
      return
    with prepare_lock(data_dir):
      if builder.is_prepared():  # another process made it while this one waited
        return
      print(f'generating {name} in {where(data_dir)} (once)', flush=True)
      builder.download_and_prepare()
  except Exception as e:  # noqa: BLE001 - say which dataset and folder, keep the cause
    raise PreparationFailed(f'preparing the dataset {name} in {where(data_dir)} failed: '
                            f'{type(e).__name__}: {e}') from e


def _not_prepared(name: str, data_dir: Optional[str], builder) -> FileNotFoundError:
  """The one-line error for a dataset that is not (completely) on disk."""
  fix = f'Prepare it once with: {prepare_command(name, data_dir)}'
  folder = os.fspath(builder.data_path) if builder is not None else None
  if folder and os.path.isdir(folder) and not paths.is_url(folder):
    contents = 'empty' if not os.listdir(folder) else 'half-written (no dataset_info.json)'
    return FileNotFoundError(
        f'TFDS dataset {name} in {where(data_dir)} is not prepared: its folder {folder} is '
        f'{contents}, left by an interrupted download_and_prepare. Delete that folder, then '
        f'{fix[0].lower()}{fix[1:]}.')
  return FileNotFoundError(
      f'TFDS dataset {name} was not found in {where(data_dir)}. {fix} (or point '
      f'--config.data.data_dir or TFDS_DATA_DIR to where it is).')


class UnknownSplit(ValueError):
  """A split the dataset does not have; the message lists the ones it has."""


def split_names(split: str) -> list[str]:
  """The named splits a TFDS split expression reads: 'train[:10%]+test' -> ['train', 'test']."""
  return [part.split('[')[0].strip() for part in split.split('+')]


def _check_split(name: str, split: str, data_dir: Optional[str], builder) -> None:
  unknown = [s for s in split_names(split) if s not in builder.info.splits]
  if unknown:
    raise UnknownSplit(f'TFDS dataset {name} in {where(data_dir)} has no split '
                       f'{unknown[0]!r}; its splits are {sorted(builder.info.splits)}.')


def _not_a_variant_note(record: std_logging.LogRecord) -> bool:
  """False for TFDS's warning 'Variant folder F has no dataset_info.json'."""
  return not str(record.msg).startswith('Variant folder %s has no')


@contextlib.contextmanager
def _variant_notes_left_out():
  """Looking for a dataset that is not prepared, TFDS warns that each folder it
  tried has no dataset_info.json (three lines for one missing dataset, naming a
  folder that may not exist); ssd_jax's error then says it in one line, with the
  fix, so these are left out while it looks."""
  logger = std_logging.getLogger('absl')
  logger.addFilter(_not_a_variant_note)
  try:
    yield
  finally:
    logger.removeFilter(_not_a_variant_note)


def open_data_source(name: str, split: str, data_dir: Optional[str]):
  """(tfds.data_source of name:split as raw bytes, the builder's features).

  Raises:
    FileNotFoundError: the dataset is missing, empty or half-written (one line,
      with the command that prepares it).
    UnknownSplit: `split` names a split the dataset does not have.
    ValueError: it is stored as TFRecord, which cannot be read by index.
  """
  prepare_built_in(name, data_dir)
  with _variant_notes_left_out():
    return _open_prepared(name, split, data_dir)


def _open_prepared(name: str, split: str, data_dir: Optional[str]):
  """open_data_source of a dataset that needs no generating."""
  builder = None
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    if builder.is_prepared():
      _check_split(name, split, data_dir, builder)
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=False,
                              deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
  except tfds.core.DatasetNotFoundError as e:
    raise _not_prepared(name, data_dir, None) from e
  except (AssertionError, KeyError, NotImplementedError) as e:
    # What TFDS raises for a missing or empty folder (its split list is empty)
    # and for files stored as TFRecord.
    if builder is None or not builder.is_prepared():
      raise _not_prepared(name, data_dir, builder) from e
    if isinstance(e, NotImplementedError):
      raise ValueError(
          f'TFDS dataset {name} in {where(data_dir)} is stored as TFRecord, which cannot be '
          f'read by index; ssd_jax needs ArrayRecord files (resuming then reads nothing '
          f'twice). Prepare it again with: {prepare_command(name, data_dir)} (TFDS reuses '
          f'the files it downloaded before).') from e
    raise
  return source, builder.info.features
