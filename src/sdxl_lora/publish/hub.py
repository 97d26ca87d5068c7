"""Hugging Face Hub upload of what a run saves (spec 1.10, 7.1), and the `--resume_from_huggingface` download.

Each saved file goes to `<path_in_repo>/<file name>` (the repo root without --huggingface_path_in_repo: sd-scripts
passes `path_in_repo=None` there, which the Hub client refuses, so its uploads fail). An upload never stops
training: a failure is one warning line naming the file. The token goes to huggingface_hub only; error texts are
scrubbed of it before they are logged.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from sdxl_lora.config.errors import ConfigError
from sdxl_lora.config.hub_options import parse_resume_location
from sdxl_lora.config.schema import HubConfig

log = logging.getLogger(__name__)


def remote_path(path_in_repo: str, name: str) -> str:
    """Where a saved file or folder named `name` goes in the repo."""
    folder = path_in_repo.strip("/")
    return f"{folder}/{name}" if folder else name


class Uploader:
    """Uploads saved model files (and state folders with --save_state_to_huggingface) to one repo.

    With --async_upload the uploads run one after the other in a background thread; `wait=True` (the final model)
    uploads in the caller's thread after the queued ones. Call `finish()` (or use it as a context manager) at the
    end of the run so that queued uploads are delivered before the process exits.
    """

    def __init__(self, hub: HubConfig, *, endpoint: str | None = None):
        if not hub.repo_id:
            raise ValueError("Uploader needs HubConfig.repo_id")
        from huggingface_hub import HfApi

        self.hub = hub
        self._api = HfApi(endpoint=endpoint, token=hub.token)
        self._repo_ready = False
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self.uploaded: list[str] = []
        """Paths in the repo delivered so far, in order."""
        self.failed: list[str] = []
        """Local names whose upload failed (each was logged once as a warning)."""

    def upload_file(self, path: str | Path, *, wait: bool = False) -> None:
        """A saved model file (or diffusers-format folder) to `<path_in_repo>/<name>`."""
        path = Path(path)
        self._submit(functools.partial(self._upload, path.name, [path]), wait)

    def upload_folder(self, state_dir: str | Path, *, wait: bool = False) -> None:
        """A saved state folder to `<path_in_repo>/<folder name>/`; nothing without --save_state_to_huggingface."""
        if self.hub.save_state_to_huggingface:
            state_dir = Path(state_dir)
            self._submit(functools.partial(self._upload, state_dir.name, [state_dir]), wait)

    def upload_card(self, card: str | Path, images: Sequence[str | Path] = (), *, wait: bool = True) -> None:
        """The model card and the sample images it links, in one commit, each at its path relative to the card's
        folder under `<path_in_repo>` (so the card's relative links work on the Hub)."""
        card = Path(card)
        self._submit(functools.partial(self._upload, card.name, [card, *map(Path, images)], base=card.parent), wait)

    def drain(self) -> None:
        """Wait until every queued upload has been tried."""
        if self._queue is not None:
            self._queue.join()

    def finish(self) -> None:
        """Deliver the queued uploads and stop the background thread; the Uploader may still be used after."""
        if self._thread is None:
            return
        pending = self._queue.unfinished_tasks
        if pending:
            log.info("waiting for %d queued Hugging Face upload(s)", pending)
        self._queue.put(None)
        self._thread.join()
        self._queue, self._thread = None, None

    def __enter__(self) -> Uploader:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            pending = self._queue.unfinished_tasks if self._queue is not None else 0
            if pending:
                log.warning("interrupted: %d queued Hugging Face upload(s) not sent", pending)
            return
        self.finish()

    def _submit(self, job: Callable[[], None], wait: bool) -> None:
        if self.hub.async_upload and not wait:
            if self._thread is None:
                self._queue = queue.Queue()
                self._thread = threading.Thread(target=self._work, args=(self._queue,), name="hub-upload",
                                                daemon=True)
                self._thread.start()
            self._queue.put(job)
            return
        self.drain()  # keeps the order: what was queued before goes first
        job()

    def _work(self, jobs: queue.Queue) -> None:
        while True:
            job = jobs.get()
            try:
                if job is None:
                    return
                job()
            finally:
                jobs.task_done()

    def _upload(self, name: str, paths: list[Path], base: Path | None = None) -> None:
        """One commit: a single file or folder under its own name, or files at their paths relative to `base`."""
        targets = [remote_path(self.hub.path_in_repo, p.relative_to(base).as_posix() if base else p.name)
                   for p in paths]
        where = f"{self.hub.repo_id}/{targets[0]}"
        missing = [p.name for p in paths if not p.exists()]
        if missing:
            what = "the file" if missing == [name] else ", ".join(missing)
            log.warning("upload of %s to %s skipped: %s was removed before it could be uploaded", name, where, what)
            self.failed.append(name)
            return
        try:
            self._ensure_repo()
            self._commit(name, paths, targets)
        except Exception as err:  # noqa: BLE001 - any failure of an upload is reported and training goes on
            log.warning("upload of %s to %s failed: %s", name, where, self._describe(err))
            self.failed.append(name)
            return
        self.uploaded.extend(targets)
        log.info("uploaded %s to %s", name, where)

    def _commit(self, name: str, paths: list[Path], targets: list[str]) -> None:
        common = dict(repo_id=self.hub.repo_id, repo_type=self.hub.repo_type,
                      commit_message=f"Upload {name} (sdxl-lora)")
        if len(paths) > 1:
            from huggingface_hub import CommitOperationAdd

            operations = [CommitOperationAdd(path_in_repo=target, path_or_fileobj=str(path))
                          for path, target in zip(paths, targets, strict=True)]
            self._api.create_commit(operations=operations, **common)
        elif paths[0].is_dir():
            self._api.upload_folder(folder_path=str(paths[0]), path_in_repo=targets[0], **common)
        else:
            self._api.upload_file(path_or_fileobj=str(paths[0]), path_in_repo=targets[0], **common)

    def _ensure_repo(self) -> None:
        """Create the repo when missing (private unless --huggingface_repo_visibility public); once per run."""
        if not self._repo_ready:
            self._api.create_repo(self.hub.repo_id, repo_type=self.hub.repo_type, private=self.hub.private,
                                  exist_ok=True)
            self._repo_ready = True

    def _describe(self, err: Exception) -> str:
        return describe_error(err, self.hub.token)


def describe_error(err: Exception, token: str | None) -> str:
    """One line: the error's type and first line, with the token (if it appears at all) masked."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
    return text.replace(token, "***") if token else text


def download_resume(spec: str, token: str | None, *, cache_dir: str | Path | None = None,
                    endpoint: str | None = None) -> Path:
    """`--resume owner/repo/path[:revision[:repo_type]]` with --resume_from_huggingface: download the files under
    `path` (into the Hugging Face cache) and return the local folder holding them. Raises ConfigError naming
    --resume when the location is malformed, unreachable or empty."""
    from huggingface_hub import snapshot_download

    try:
        where = parse_resume_location(spec)
    except ValueError as err:
        raise ConfigError(f"--resume {spec}: not owner/repo/path[:revision[:repo_type]] ({err})") from None
    log.info("downloading the state to resume from: %s", spec)
    try:
        root = snapshot_download(where.repo_id, repo_type=where.repo_type, revision=where.revision,
                                 allow_patterns=[f"{where.path}/*"] if where.path else None, token=token,
                                 cache_dir=cache_dir, endpoint=endpoint)
    except Exception as err:  # noqa: BLE001 - every download failure becomes one line naming the flag
        raise ConfigError(f"--resume {spec}: cannot download it from the Hugging Face Hub: "
                          f"{describe_error(err, token)}") from None
    folder = Path(root) / where.path
    if not folder.is_dir() or not any(folder.iterdir()):
        raise ConfigError(f"--resume {spec}: no files under '{where.path or '/'}' in {where.repo_id}"
                          f"{f' at {where.revision}' if where.revision else ''}")
    return folder
