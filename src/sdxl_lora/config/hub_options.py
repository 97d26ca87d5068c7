"""The Hugging Face Hub options (spec 1.10): the `--resume_from_huggingface` location, and the checks and warnings
run before any model is loaded. Pure string logic; nothing here touches the network."""

from __future__ import annotations

import re
from dataclasses import dataclass

REPO_TYPES = ("model", "dataset", "space")
RESUME_FORMAT = "owner/repo/path[:revision[:repo_type]]"
# A repo id as the Hub spells it: 'name' (the token's own namespace) or 'owner/name'; letters, digits, '-', '_', '.'.
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})?$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
# Flags that only act on uploads: they do nothing without --huggingface_repo_id.
_UPLOAD_ONLY = ("huggingface_repo_type", "huggingface_path_in_repo", "huggingface_repo_visibility",
                "save_state_to_huggingface", "async_upload")


@dataclass(frozen=True)
class HubLocation:
    """Where `--resume` points with `--resume_from_huggingface`."""

    repo_id: str
    """owner/name."""
    path: str
    """Folder in the repo holding the state files ('' is the repo root)."""
    revision: str | None = None
    """Branch, tag or commit; None is the default branch."""
    repo_type: str | None = None
    """model (None), dataset or space."""


def parse_resume_location(spec: str) -> HubLocation:
    """`owner/repo/path[:revision[:repo_type]]` (spec 1.10); raises ValueError saying what is wrong."""
    location, *rest = spec.split(":")
    if len(rest) > 2:
        raise ValueError("more than two ':'")
    parts = location.rstrip("/").split("/")
    if len(parts) < 2 or not _NAME.match(parts[0]) or not _NAME.match(parts[1]):
        raise ValueError("it does not start with owner/repo")
    revision = rest[0] if rest and rest[0] else None
    repo_type = rest[1] if len(rest) > 1 and rest[1] else None
    if repo_type is not None and repo_type not in REPO_TYPES:
        raise ValueError(f"repo type '{repo_type}' is not one of {', '.join(REPO_TYPES)}")
    return HubLocation(repo_id=f"{parts[0]}/{parts[1]}", path="/".join(p for p in parts[2:] if p),
                       revision=revision, repo_type=repo_type)


def hub_problems(v: dict) -> list[str]:
    """Bad hub options, one line each naming the flag (the token's value is never quoted)."""
    problems = []
    repo_id, repo_type = v.get("huggingface_repo_id") or None, v.get("huggingface_repo_type") or None
    if repo_id is not None and not _REPO_ID.match(str(repo_id)):
        problems.append(f"--huggingface_repo_id {repo_id}: not a Hugging Face repo id (expected owner/name: "
                        "letters, digits, '-', '_' and '.')")
    if repo_type is not None and repo_type not in REPO_TYPES:
        problems.append(f"--huggingface_repo_type {repo_type}: expected one of {', '.join(REPO_TYPES)}")
    if v.get("resume_from_huggingface"):
        resume = v.get("resume") or None
        if resume is None:
            problems.append(f"--resume_from_huggingface needs --resume {RESUME_FORMAT} (the state folder on the "
                            "Hub to resume from)")
        else:
            try:
                parse_resume_location(str(resume))
            except ValueError as err:
                problems.append(f"--resume {resume}: with --resume_from_huggingface it must be {RESUME_FORMAT} "
                                f"({err})")
    return problems


def hub_warnings(v: dict) -> list[str]:
    """Hub options that have nothing to act on: sd-scripts ignores them silently; we go on and say so."""
    if v.get("huggingface_repo_id"):
        if v.get("save_state_to_huggingface") and not (v.get("save_state") or v.get("save_state_on_train_end")):
            return ["--save_state_to_huggingface: no state folder is saved without --save_state or "
                    "--save_state_on_train_end, so none is uploaded"]
        return []
    warnings = [f"--{name} has no effect without --huggingface_repo_id (nothing is uploaded)"
                for name in _UPLOAD_ONLY if v.get(name)]
    if v.get("huggingface_token") and not v.get("resume_from_huggingface"):
        warnings.append("--huggingface_token is unused: there is no --huggingface_repo_id and no "
                        "--resume_from_huggingface")
    return warnings
