"""docs/recipe.md against the configs and against what main prints at start: every
row that names a config field holds that field's value."""
import ast
import pathlib
import re
import subprocess
import sys

import pytest
import yaml

from ssd_jax import config_lib

ROOT = pathlib.Path(__file__).resolve().parent.parent
SECTION = re.compile(r'^## .*\(`configs/(\w+)\.py`\)')
ROW = re.compile(r'^\| [^|]+ \| `([a-z_]+\.[a-z_0-9]+)` \| `(.+?)` \| [^|]+ \|$')


def documented() -> list[tuple[str, str, object]]:
  """(config name, field, value) of every recipe row that names a field."""
  rows, name = [], None
  for line in (ROOT / 'docs' / 'recipe.md').read_text().splitlines():
    if line.startswith('## '):
      m = SECTION.match(line)
      name = m.group(1) if m else None
    m = ROW.match(line)
    if m and name:
      rows.append((name, m.group(1), ast.literal_eval(m.group(2))))
  return rows


def tuples(value):
  return tuple(tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def test_the_recipe_page_covers_every_config_section():
  rows = documented()
  assert {name for name, _, _ in rows} == {'voc300', 'voc512', 'coco300'}
  fields = {field for name, field, _ in rows if name == 'voc300'}
  for section in ('model', 'anchors', 'matching', 'loss', 'augment', 'optim', 'eval'):
    assert any(f.startswith(section + '.') for f in fields), section
  assert len(rows) > 60


@pytest.mark.parametrize('name', ['voc300', 'voc512', 'coco300'])
def test_configs_hold_the_documented_values(load_config, name):
  config = config_lib.validate(load_config(name))
  wrong = [(field, value, tuples(config[field.split('.')[0]][field.split('.')[1]]))
           for n, field, value in documented() if n == name
           if tuples(config[field.split('.')[0]][field.split('.')[1]]) != tuples(value)]
  assert not wrong, wrong


def test_what_main_prints_at_start_agrees_with_the_recipe(tmp_path):
  """The config main logs before anything else (it then stops: no data here)."""
  run = subprocess.run([sys.executable, '-m', 'ssd_jax.main', f'--config={ROOT}/configs/voc300.py',
                        f'--workdir={tmp_path / "run"}', f'--config.data.data_dir={tmp_path}'],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert run.returncode == 1 and 'was not found' in run.stderr
  logged = run.stderr.split('config:\n', 1)[1]
  lines = []
  for line in logged.splitlines():  # the YAML, up to the next log line or the error
    if re.match(r'^[IWEF]\d{4} ', line) or line.startswith('main.py: error: '):
      break
    lines.append(line)
  printed = yaml.unsafe_load('\n'.join(lines))
  for name, field, value in documented():
    if name == 'voc300':
      section, key = field.split('.')
      assert tuples(printed[section][key]) == tuples(value), field


def ssd_jax_imports(module: str) -> set[str]:
  """The ssd_jax modules `module` (dotted) imports, read from its source."""
  path = ROOT / (module.replace('.', '/') + '.py')
  if not path.is_file():
    path = ROOT / module.replace('.', '/') / '__init__.py'
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name.startswith('ssd_jax.')}
    elif isinstance(node, ast.ImportFrom) and (node.module or '').startswith('ssd_jax'):
      package = (ROOT / node.module.replace('.', '/')).is_dir()
      found |= ({f'{node.module}.{a.name}' for a in node.names} if package else {node.module})
  return {m for m in found if (ROOT / (m.replace('.', '/') + '.py')).is_file()
          or (ROOT / m.replace('.', '/')).is_dir()}


def test_the_schema_imports_no_model():
  seen, todo = set(), ['ssd_jax.schema']
  while todo:
    module = todo.pop()
    if module not in seen:
      seen.add(module)
      todo.extend(ssd_jax_imports(module))
  assert 'ssd_jax.pixels' in seen and not [m for m in seen if m.startswith('ssd_jax.models')]
  assert 'ssd_jax.models' in ssd_jax_imports('ssd_jax.config_lib')  # where the families come in
