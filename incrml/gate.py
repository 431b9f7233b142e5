"""The champion gate: whether a new model (the challenger) replaces the champion.

A pure decision on two numbers measured on the same fixed holdout; tracking.py logs it and
moves the registered model's `champion` alias when the challenger wins.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

CHAMPION = "champion"


@dataclass(frozen=True)
class Decision:
    promoted: bool
    metric: str
    challenger: float
    champion: float | None
    champion_version: str | None
    reason: str

    @property
    def summary(self) -> str:
        """What the ingest table shows: `promoted`, or `kept vN`."""
        return "promoted" if self.promoted else f"kept v{self.champion_version}"

    def as_dict(self) -> dict:
        return {**asdict(self), "summary": self.summary}


def decide(
    metric: str,
    challenger: float,
    champion: float | None,
    champion_version: str | None,
    tolerance: float,
    same_model: bool = False,
    unscorable: str | None = None,
) -> Decision:
    """Promote when the challenger's metric is at least the champion's less the tolerance, or
    when the champion cannot be scored on this holdout at all (`unscorable` says why)."""

    def decision(promoted: bool, reason: str) -> Decision:
        return Decision(promoted, metric, challenger, champion, champion_version, reason)

    if same_model:
        return decision(False, f"the same model as champion v{champion_version}")
    if unscorable:
        return decision(True, f"champion v{champion_version} cannot be scored on this holdout ({unscorable})")
    if champion_version is None or champion is None:
        return decision(True, "no champion yet")
    allowed = f" - tolerance {tolerance:g}" if tolerance else ""
    if round(challenger, 6) >= round(champion - tolerance, 6):
        return decision(True, f"{metric} {challenger:.4f} >= champion v{champion_version}'s {champion:.4f}{allowed}")
    return decision(False, f"{metric} {challenger:.4f} < champion v{champion_version}'s {champion:.4f}{allowed}")
