"""What validate decides for each task, what run makes of it, and how both travel through XCom.

A verdict is a frozen dataclass. ``Plan`` subclasses are a strategy's validated changes (a booking,
a fulfilment, a mismatch to mark); ``ManualReview``, ``Wait`` and ``AlreadyProcessed`` are final
without a ledger write; ``Retry`` is an unexpected exception (the attempt counts). Run turns a plan
into ``Applied`` (or, for a mismatch, a ``ManualReview`` next to its ledger write).

Between Airflow tasks the verdicts travel as compact codes, ``[class name, *field values]``,
grouped so that identical verdicts (every booking under one rule) are written once with the
positions they apply to: XCom carries ids, counts and these codes, never an entry's data.
Lists that grow with the chunk (ids, positions, codes) travel packed in one JSON string each
(``pack``): Airflow serializes, redacts and validates an XCom value object by object, which for
a chunk's 12,500 ids and codes cost more CPU than the engine's own work on them.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Sequence

from recon.errors import ErrorType

_VERDICT_TYPES: dict[str, type["Verdict"]] = {}


@dataclass(frozen=True, slots=True)
class Verdict:
    """Base of every verdict; subclasses register themselves by class name for decoding."""

    summary_kind: ClassVar[str] = "verdict"  # how the dry-run summary counts it

    def __init_subclass__(cls) -> None:  # no super(): slots=True makes a new class
        _VERDICT_TYPES[cls.__name__] = cls

    def to_code(self) -> list[Any]:
        """Plain JSON values only (an enum as its value): Airflow's XCom serializer needs no class."""
        values = (getattr(self, f.name) for f in fields(self))
        return [type(self).__name__, *(v.value if isinstance(v, enum.Enum) else v for v in values)]

    @staticmethod
    def from_code(code: Sequence[Any]) -> "Verdict":
        name, *values = code
        try:
            return _VERDICT_TYPES[name](*values)
        except KeyError:
            raise ValueError(f"unknown verdict {name!r}: its strategy module is not imported") from None

    @property
    def review_type(self) -> str | None:
        """The manual-review error type this verdict ends in, if any."""
        return None

    def outcome(self) -> str:
        """What this verdict would make of the entry, as a reprocess dry run names it: the error
        type it ends in, else the verdict's own name (Book, Fulfil, Wait...)."""
        return self.review_type or type(self).__name__

    def detail(self) -> str:
        """A short why for people (a dry run's listing); empty when the outcome says it all."""
        return ""


@dataclass(frozen=True, slots=True)
class AlreadyProcessed(Verdict):
    """The entry is PROCESSED (a second run of its task): the task completes, nothing else."""

    summary_kind: ClassVar[str] = "already_processed"


@dataclass(frozen=True, slots=True)
class ManualReview(Verdict):
    """A business outcome that needs a person: final for the task (FAILED), the entry in review."""

    error_type: ErrorType
    message: str
    metadata: dict[str, Any] = field(default_factory=dict)  # e.g. matched_transaction_id
    summary_kind: ClassVar[str] = "manual_review"

    def __post_init__(self) -> None:
        object.__setattr__(self, "error_type", ErrorType(self.error_type))

    @property
    def review_type(self) -> str:
        return self.error_type.value

    def detail(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class Wait(Verdict):
    """Not decidable yet (e.g. a confirmation that arrived before its order): due again later,
    without using an attempt."""

    reason: str
    seconds: float
    summary_kind: ClassVar[str] = "waiting"

    def detail(self) -> str:
        return self.reason


@dataclass(frozen=True, slots=True)
class Retry(Verdict):
    """An unexpected exception while handling this task: tried again with backoff (the attempt counts)."""

    error: str
    summary_kind: ClassVar[str] = "error"

    def detail(self) -> str:
        return self.error


@dataclass(frozen=True, slots=True)
class Plan(Verdict):
    """A validated change that its strategy's ``run`` writes; subclasses name the change and set
    ``summary_kind`` (e.g. "book")."""

    summary_kind: ClassVar[str] = "plan"


@dataclass(frozen=True, slots=True)
class Applied:
    """What run wrote for a plan: counted by kind ("book", "fulfil"), and the staging entry's
    success metadata."""

    kind: str
    staging_metadata: dict[str, Any]


RunResult = Applied | ManualReview


# ---- the data flow between the DAG's steps ----------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """decide's output: for each route (a strategy's name, or why there is none), its positions."""

    task_ids: list[str]
    routes: dict[str, list[int]]

    def to_xcom(self) -> dict[str, Any]:
        return {"count": len(self.task_ids), "task_ids": pack(self.task_ids), "routes": pack(self.routes)}

    @classmethod
    def from_xcom(cls, value: dict[str, Any]) -> "Decision":
        return cls(unpack(value["task_ids"]), unpack(value["routes"]))

    def route_of_each(self) -> list[str]:
        """The route name of every task, in task order."""
        names = [""] * len(self.task_ids)
        for name, positions in self.routes.items():
            for i in positions:
                names[i] = name
        return names


@dataclass(frozen=True)
class Validation:
    """validate's output: decide's routes and one verdict per task, in task order."""

    decision: Decision
    verdicts: list[Verdict]

    @property
    def task_ids(self) -> list[str]:
        return self.decision.task_ids

    def counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """(verdicts by summary kind, manual reviews by error type): what a dry run reports."""
        kinds: dict[str, int] = {}
        reviews: dict[str, int] = {}
        for verdict in self.verdicts:
            kinds[verdict.summary_kind] = kinds.get(verdict.summary_kind, 0) + 1
            if verdict.review_type:
                reviews[verdict.review_type] = reviews.get(verdict.review_type, 0) + 1
        return kinds, reviews

    def to_xcom(self) -> dict[str, Any]:
        kinds, reviews = self.counts()
        return {**self.decision.to_xcom(), "codes": pack(encode(self.verdicts)), "verdicts": kinds,
                "manual_review_by_type": reviews}

    @classmethod
    def from_xcom(cls, value: dict[str, Any]) -> "Validation":
        decision = Decision.from_xcom(value)
        return cls(decision, decode(unpack(value["codes"]), len(decision.task_ids)))


def pack(value: list[Any] | dict[str, Any]) -> str:
    """A list or mapping that grows with the chunk, as one compact JSON string for XCom."""
    return json.dumps(value, separators=(",", ":"))


def unpack(packed: str) -> Any:
    """What ``pack`` made."""
    return json.loads(packed)


def encode(verdicts: Sequence[Verdict]) -> list[list[Any]]:
    """Verdicts as [[code, [positions]], ...], identical codes once, in order of first appearance."""
    groups: dict[Any, list[Any]] = {}
    for position, verdict in enumerate(verdicts):
        code = verdict.to_code()
        try:
            key: Any = tuple(code)
            hash(key)
        except TypeError:  # a dict in the code (a review's metadata): compare its JSON
            key = json.dumps(code, sort_keys=True, default=str)
        groups.setdefault(key, [code, []])[1].append(position)
    return list(groups.values())


def decode(encoded: Sequence[Sequence[Any]], count: int) -> list[Verdict]:
    verdicts: list[Verdict | None] = [None] * count
    for code, positions in encoded:
        verdict = Verdict.from_code(code)
        for position in positions:
            verdicts[position] = verdict
    missing = [i for i, v in enumerate(verdicts) if v is None]
    if missing:
        raise ValueError(f"no verdict for task position(s) {missing[:5]}")
    return verdicts  # type: ignore[return-value]
