"""The user's documents: README.md and docs/*.md link to pages and sections that
exist (so no page points outside the repository), and speak of the software, not
of how it was developed."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]


def anchors(page: pathlib.Path) -> set[str]:
  """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as -."""
  headings = re.findall(r'^#+ (.+)$', page.read_text(), re.M)
  return {re.sub(r'[^\w\- ]', '', h.strip().lower()).replace(' ', '-') for h in headings}


def prose(page: pathlib.Path) -> str:
  """A page without its code blocks and inline code."""
  return re.sub(r'`[^`\n]*`', '', re.sub(r'^```.*?^```', '', page.read_text(), flags=re.M | re.S))


def test_relative_links_reach_existing_pages_and_sections():
  broken = []
  for page in PAGES:
    for target in re.findall(r'\]\(([^)\s]+)\)', prose(page)):
      if re.match(r'[a-z]+://', target):
        continue
      file, _, section = target.partition('#')
      linked = (page.parent / file).resolve() if file else page
      outside = ROOT not in linked.parents and linked != ROOT
      if outside or not linked.exists() or (section and linked.suffix == '.md'
                                 and section not in anchors(linked)):
        broken.append(f'{page.relative_to(ROOT)}: {target}')
  assert not broken, broken


def test_documents_do_not_speak_of_sessions():
  for page in PAGES:
    assert not re.search(r'\bsessions?\b', page.read_text(), re.I), page
