"""What ``compresskit data check`` found: one :class:`Problem` per fault and the :class:`CheckReport` that holds
them with the dataset's summary counts, and formats both for people (capped per kind, so 10,000 bad boxes stay
readable). The checks themselves live in :mod:`compresskit.data.check`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from compresskit.data.values import one_line
from compresskit.errors import DatasetError


@dataclass
class Problem:
    """One thing wrong with the dataset; ``kind`` groups problems for capped printing and for tests."""

    file: str
    record: str
    what: str
    fix: str
    severity: str = "error"
    kind: str = "other"

    def __str__(self) -> str:
        marker = "" if self.severity == "error" else f"{self.severity}: "
        # one_line: a path or value with a newline or a lone surrogate must not break the one-line-per-problem rule
        where = f"{self.file}: " + (f"{self.record}: " if self.record not in ("", "-") else "")  # "-": the whole file
        return one_line(f"{where}{marker}{self.what} — fix: {self.fix}", limit=1000)


@dataclass
class CheckReport:
    """Everything ``check_dataset`` found: all problems (uncapped) and summary counts."""

    annotation_file: Path
    images_dir: Path
    problems: list[Problem] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    hints: list[str] = field(default_factory=list)  # likely causes behind many problems at once, one line each
    explained: set[str] = field(default_factory=set)  # kinds of problem a hint explains: printed once, then counted

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity != "error"]

    @property
    def ok(self) -> bool:
        """True when there are no errors; warnings (e.g. grayscale images) do not stop training."""
        return not self.errors

    def raise_for_errors(self, limit: int = 5) -> None:
        """Raise DatasetError listing the first ``limit`` errors per kind, for code that must not go on."""
        if len(self.errors) == 1 and not self.hints:  # one fault, one line: the problem names the file itself
            raise DatasetError(str(self.errors[0]))
        if not self.ok:
            errors_only = CheckReport(self.annotation_file, self.images_dir, self.errors, hints=self.hints,
                                      explained=self.explained)
            shown = errors_only.format_problems(limit)
            raise DatasetError(f"{len(self.errors)} problem(s) in {self.annotation_file}:\n{shown}")

    def format_summary(self) -> str:
        """Counts, COCO area histogram and annotations per category, as a few lines of text."""
        s = self.summary
        lines = [
            # Names, not full paths: the summary is pasted into notebooks and issue reports.
            f"dataset {Path(self.annotation_file).name} (images in {Path(self.images_dir).name}/)",
            f"  images: {s.get('images', 0)}   annotations: {s.get('annotations', 0)}   "
            f"categories: {s.get('categories', 0)}   crowd annotations: {s.get('crowd', 0)}",
            f"  box areas: small (<32²) {s.get('small', 0)}   medium {s.get('medium', 0)}   "
            f"large (>96²) {s.get('large', 0)}",
        ]
        names = s.get("category_names", {})
        per_category = sorted(s.get("per_category", {}).items(), key=lambda kv: (-kv[1], kv[0]))
        items = [f"{one_line(str(names.get(cid, cid)), 60)} {count}" for cid, count in per_category if count]
        empty = sum(1 for _, count in per_category if not count)
        if items:  # COCO has 80 categories: wrap between items rather than print one 800-character line
            lines.append("  per category:")
            for item in items + ([f"({empty} categories with none)"] if empty else []):
                if len(lines[-1]) + len(item) > 110:
                    lines.append("   ")
                lines[-1] += f" {item},"
            lines[-1] = lines[-1].rstrip(",")
        return "\n".join(lines)

    def format_problems(self, limit: int = 50) -> str:
        """One line per problem, errors first, then one line per hint.

        Args:
            limit: lines shown per kind, then a count of the rest, so 10,000 bad boxes stay readable.
        Returns:
            The text, empty when there are no problems.
        """
        by_kind: dict[tuple[bool, str], list[Problem]] = {}
        for problem in self.problems:  # dicts keep first-seen order, so kinds print in the order found
            by_kind.setdefault((problem.severity != "error", problem.kind), []).append(problem)
        lines = []
        for (_, kind), problems in sorted(by_kind.items(), key=lambda kv: kv[0][0]):
            shown = 1 if kind in self.explained else limit  # one cause (the hint below): one example is enough
            lines.extend(str(p) for p in problems[:shown])
            if len(problems) > shown:
                lines.append(f"... and {len(problems) - shown} more '{kind}' problems like "
                             + ("it (the hint below says why)" if kind in self.explained else "these"))
        lines.extend(f"hint: {hint}" for hint in self.hints)
        return "\n".join(lines)
