"""Labeling settings: `LINELOOP_LABELING_*` (shared addresses come from `LINELOOP_*`)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from lineloop.contracts.catalogue import bucket
from lineloop.runtime import ServiceSettings, service_config


class LabelingSettings(ServiceSettings):
    service_name: ClassVar[str] = "labeling"
    model_config = service_config("labeling")

    classes: list[str] = Field(default_factory=lambda: ["ok", "bruise", "rot", "scab"])

    # Review queue: priority = uncertainty + balance + camera + drift terms, each weighted.
    uncertainty: Literal["margin", "entropy"] = "margin"
    weight_uncertainty: float = 1.0
    weight_class_balance: float = 0.3
    weight_camera_diversity: float = 0.2
    drift_boost: float = 1.0
    # Frames a canary scored: the registry holds a canary until its live labels show it not
    # worse than production (or worse), so its frames are the scarcest evidence.
    canary_boost: float = 1.0
    # Test-split frames of a class the gate lacked evidence on: a held candidate waits for them.
    evidence_boost: float = 1.0
    # Candidates re-ranked per NextTasks call (the best by stored uncertainty, plus drift-scoped ones).
    queue_candidates: int = 500
    lease_s: float = 600.0
    max_tasks_per_call: int = 100
    image_url_expiry_s: int = 3600

    # With auth on, roles whose Label Studio imports are ground truth (may enter a test split);
    # anyone else's import is LABEL_SOURCE_IMPORT_UNVERIFIED: it trains, and the frame stays queued.
    ground_truth_roles: list[str] = Field(default_factory=lambda: ["annotator", "admin"])

    # A label flagged as likely wrong goes back to the queue for a second reviewer, first in line.
    second_review_boost: float = 2.0

    # Model predictions at or above this top score become model labels (never in a test split); >1 disables.
    auto_accept_threshold: float = 0.98

    # Drift: how long a drift.detected.v1 keeps boosting its frames and lowering the cut threshold.
    drift_active_s: float = 3600.0

    # Dataset-cut policy, checked every `policy_interval_s` for every line with labels.
    policy_interval_s: float = 10.0
    cut_min_labels: int = 200            # new human labels since the line's last version
    cut_min_labels_drift: int = 50       # the same while a drift on the line is active
    cut_schedule_s: float = 0.0          # 0: no scheduled cuts; else cut when this old and anything is new
    cut_lock_s: float = 120.0            # a replica's claim on cutting one dataset
    # Label check before a cut (label_issues.py): confident learning on the predictions stored with
    # the frames (out-of-sample: the model that scored a frame at ingest was trained before it).
    label_check: bool = True
    label_check_min_frames: int = 100     # fewer checkable labels: the version says "not checked"
    label_check_filter: Literal["prune_by_class", "prune_by_noise_rate", "both", "confident_learning"] = "prune_by_class"
    # How long a cut waits for second reviews of the labels it flagged; then it goes ahead and
    # the unreviewed ones stay out of the test split. 0: never wait.
    label_check_timeout_s: float = 1800.0
    split_val: float = 0.1
    split_test: float = 0.1
    datasets_bucket: str = bucket("datasets")

    @field_validator("classes")
    @classmethod
    def _classes_unique(cls, value: list[str]) -> list[str]:
        if not value or len(set(value)) != len(value):
            raise ValueError("classes must be a non-empty list of distinct names")
        return value

    @model_validator(mode="after")
    def _splits_leave_room_for_training(self) -> LabelingSettings:
        if min(self.split_val, self.split_test) < 0 or self.split_val + self.split_test >= 1:
            raise ValueError("split_val and split_test must be >= 0 and leave a train split (sum < 1)")
        return self
