"""The README's real-time snippet works as written on the demo's data: it answers a float
for the demo's student ids at a target in theta units (before: None for "user-123" and
0.0 at target 150 on a theta-scale demo)."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path


from growth_assets.db import connect
from growth_assets import metrics
from growth_assets.demo.cohort import seed_cohort

README = Path(__file__).resolve().parents[2] / "README.md"


def snippet() -> str:
    text = README.read_text()
    section = text[text.index("## Real-time goal probability"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_snippet_answers_for_the_demo(db_url, monkeypatch):
    with connect(db_url) as c:
        seed_cohort(c, n_students=20, n_weeks=12, seed=1, as_of=datetime.now(timezone.utc).date())
    monkeypatch.setenv("DATABASE_URL", db_url)
    answers = []
    real = metrics.compute_goal_attainment_probability

    def recording(*a, **kw):
        answers.append(real(*a, **kw))
        return answers[-1]

    monkeypatch.setattr(metrics, "compute_goal_attainment_probability", recording)
    exec(compile(snippet(), "README.md", "exec"), {})
    assert len(answers) == 2
    assert all(isinstance(p, float) and 0.0 < p < 1.0 for p in answers), answers
