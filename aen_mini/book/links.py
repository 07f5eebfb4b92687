"""The book's one repository URL (``repository:`` in _config.yml) and everything derived from it.

Colab badges, the Colab install cell of every chapter and the book's repository button all come from
`Repository.from_config`, so they cannot disagree. The project is not yet published at that URL: the
install cell therefore prefers a wheel uploaded into the Colab session (built by ``make wheel``) and falls
back to the URL only when there is none.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Repository", "STUDENT_DIR"]

# Student editions of the chapters live here, at the same depth as notebooks/ so that relative paths such
# as ../book/results resolve the same in both editions.
STUDENT_DIR = "student"

_GITHUB = re.compile(r"^https://github\.com/(?P<slug>[\w.-]+/[\w.-]+?)/?$")


@dataclass(frozen=True)
class Repository:
    """A GitHub repository and branch: ``slug`` is "owner/name"."""

    slug: str
    branch: str

    @classmethod
    def from_config(cls, root: Path) -> "Repository":
        """Read ``repository: {url, branch}`` from ``root/_config.yml``."""
        import yaml  # only the book tooling reads _config.yml; pyyaml comes with the [book] extra

        config = yaml.safe_load((Path(root) / "_config.yml").read_text())
        repo = config.get("repository") or {}
        match = _GITHUB.match(str(repo.get("url", "")))
        if match is None:
            raise ValueError(f"_config.yml: repository.url must be https://github.com/OWNER/NAME, got {repo.get('url')!r}")
        return cls(match["slug"], str(repo.get("branch", "main")))

    @property
    def url(self) -> str:
        return f"https://github.com/{self.slug}"

    def colab_url(self, stem: str) -> str:
        """Where the Colab badge of chapter `stem` points: its student edition."""
        return f"https://colab.research.google.com/github/{self.slug}/blob/{self.branch}/{STUDENT_DIR}/{stem}.ipynb"

    def colab_badge(self, stem: str) -> str:
        return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({self.colab_url(stem)})"

    def install_cell(self) -> str:
        """The first code cell of every chapter: installs the package on Colab only (a no-op elsewhere)."""
        return (
            "# On Colab only: install aen-mini. It is not yet published, so upload the wheel that `make wheel`\n"
            "# builds (dist/aen_mini-*.whl) into the session's files first; without one this tries the repository.\n"
            "import glob, sys\n"
            'if "google.colab" in sys.modules:\n'
            '    wheels = sorted(glob.glob("/content/aen_mini-*.whl"))\n'
            f'    source = f"file://{{wheels[-1]}}" if wheels else "git+{self.url}@{self.branch}"\n'
            '    !pip install -q "aen-mini[llm,book] @ {source}"'
        )
