"""A fake Hugging Face Hub on 127.0.0.1: just enough of the Hub's HTTP API for huggingface_hub 2.4.0 to create a
repo, commit regular (base64) files, and download them with snapshot_download. It records every request.

Read from huggingface_hub's own source (hf_api.create_repo / preupload_lfs_files / _commit_api._send_commit /
repo_info / list_repo_tree / file_download.get_hf_file_metadata), not from the Hub's documentation.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import pytest

_TYPES = "(?P<type>models|datasets|spaces)"
_REPO = "(?P<repo>[^/]+/[^/]+)"
ROUTES = (
    ("POST", re.compile(r"^/api/repos/create$"), "create"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate_yaml"),
    ("POST", re.compile(rf"^/api/{_TYPES}/{_REPO}/preupload/(?P<rev>[^/]+)$"), "preupload"),
    ("POST", re.compile(rf"^/api/{_TYPES}/{_REPO}/commit/(?P<rev>[^/]+)$"), "commit"),
    ("GET", re.compile(rf"^/api/{_TYPES}/{_REPO}/revision/(?P<rev>[^/]+)$"), "info"),
    ("GET", re.compile(rf"^/api/{_TYPES}/{_REPO}/tree/(?P<rev>[^/]+)(?P<path>/.*)?$"), "tree"),
    ("GET", re.compile(rf"^/(?P<prefix>datasets/|spaces/)?{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "resolve"),
    ("HEAD", re.compile(rf"^/(?P<prefix>datasets/|spaces/)?{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "resolve"),
)


@dataclass
class Repo:
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    head: str = "0" * 40


@dataclass
class Request:
    method: str
    path: str
    authorization: str | None
    body: bytes


class FakeHub:
    """State of the fake Hub: repos by (type, id), the requests seen, and failures to inject."""

    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[Request] = []
        self.fail_commits_of: set[str] = set()
        """Paths in the repo whose commit answers 500."""
        self.commit_gate: threading.Event | None = None
        """When set, every commit waits for this event (to see uploads run in the background)."""
        self.lock = threading.Lock()
        self.endpoint = ""

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def repo_files(self, repo_id: str, repo_type: str = "model") -> set[str]:
        repo = self.repos.get((repo_type, repo_id))
        return set(repo.files) if repo is not None else set()

    def seen(self, method: str, pattern: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and re.search(pattern, r.path)]

    def add_files(self, repo_id: str, files: dict[str, bytes], repo_type: str = "model") -> None:
        repo = self.repos.setdefault((repo_type, repo_id), Repo(private=True))
        repo.files.update(files)
        repo.head = hashlib.sha1(repr(sorted(repo.files.items())).encode()).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub

    def log_message(self, *args) -> None:  # keep the test output quiet
        pass

    def do_GET(self) -> None:
        self._route("GET")

    def do_HEAD(self) -> None:
        self._route("HEAD")

    def do_POST(self) -> None:
        self._route("POST")

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        path = unquote(url.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with self.hub.lock:
            self.hub.requests.append(Request(method, path, self.headers.get("authorization"), body))
        for verb, pattern, name in ROUTES:
            match = pattern.match(path)
            if verb == method and match:
                return getattr(self, f"_{name}")(match, body)
        self._send(404, {"error": f"fake hub: no route for {method} {path}"})

    def _send(self, status: int, payload=None, headers: dict | None = None, raw: bytes | None = None) -> None:
        data = raw if raw is not None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream" if raw is not None else "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _repo(self, match) -> Repo | None:
        kind = match.groupdict().get("type") or (match.groupdict().get("prefix") or "models/").rstrip("/")
        return self.hub.repos.get((kind[:-1], match["repo"]))

    def _create(self, match, body: bytes) -> None:
        payload = json.loads(body)
        repo_id = f"{payload.get('organization') or 'me'}/{payload['name']}"
        key = (payload.get("type") or "model", repo_id)
        if key in self.hub.repos:
            return self._send(409, {"error": "You already created this model repo",
                                    "url": f"{self.hub.endpoint}/{repo_id}"})
        self.hub.repos[key] = Repo(private=payload.get("visibility") == "private")
        self._send(200, {"url": f"{self.hub.endpoint}/{repo_id}"})

    def _validate_yaml(self, match, body: bytes) -> None:
        self._send(200, {"errors": [], "warnings": []})

    def _preupload(self, match, body: bytes) -> None:
        if self._repo(match) is None:
            return self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        files = json.loads(body)["files"]
        self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                   for f in files]})

    def _commit(self, match, body: bytes) -> None:
        repo = self._repo(match)
        if repo is None:
            return self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        files = {}
        for line in lines[1:]:
            if line["key"] != "file":
                return self._send(400, {"error": f"fake hub: only regular files, got {line['key']}"})
            files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
        if self.hub.fail_commits_of & set(files):
            return self._send(500, {"error": "Internal Error - We're working hard to fix this as soon as possible!"})
        if self.hub.commit_gate is not None:
            self.hub.commit_gate.wait(timeout=30)
        with self.hub.lock:
            repo.files.update(files)
            repo.head = hashlib.sha1(repr(sorted(repo.files.items())).encode()).hexdigest()
        self._send(200, {"commitUrl": f"{self.hub.endpoint}/{match['repo']}/commit/{repo.head}",
                         "commitOid": repo.head, "pullRequestUrl": None})

    def _info(self, match, body: bytes) -> None:
        repo = self._repo(match)
        if repo is None:
            return self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        self._send(200, {"id": match["repo"], "sha": repo.head, "private": repo.private,
                         "siblings": [{"rfilename": p} for p in sorted(repo.files)]})

    def _tree(self, match, body: bytes) -> None:
        repo = self._repo(match)
        if repo is None:
            return self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        prefix = (match["path"] or "").strip("/")
        self._send(200, [{"type": "file", "path": p, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                         for p, data in sorted(repo.files.items()) if p.startswith(prefix)])

    def _resolve(self, match, body: bytes) -> None:
        repo = self._repo(match)
        data = repo.files.get(match["path"]) if repo is not None else None
        if data is None:
            return self._send(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
        self._send(200, headers={"X-Repo-Commit": repo.head, "ETag": f'"{hashlib.sha1(data).hexdigest()}"'},
                   raw=data)


@pytest.fixture
def fake_hub(monkeypatch):
    """A running fake Hub; huggingface_hub is put online (the suite runs with HF_HUB_OFFLINE=1) and told nothing
    else: each test passes `fake_hub.endpoint` explicitly."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    hub = FakeHub()
    handler = type("Handler", (_Handler,), {"hub": hub})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    hub.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield hub
    server.shutdown()
    server.server_close()
    thread.join()
