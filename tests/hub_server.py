"""A local HTTP server that answers the parts of the Hugging Face Hub's protocol the project uses, for offline tests.

Download side (``hf_hub_download``, ``snapshot_download``): ``HEAD``/``GET {endpoint}/[datasets/]{repo_id}/resolve/
{revision}/{path}`` with the commit in ``X-Repo-Commit``, the ETag and the size; ``GET /api/{type}s/{repo_id}
[/revision/{revision}]`` (repo info: sha, private, siblings) and ``GET /api/{type}s/{repo_id}/tree/{revision}``
(the file list, with the LFS pointer of LFS files).

Upload side (``HfApi.create_repo``, ``create_commit``/``upload_folder``, ``create_branch``, ``create_tag``), as
``huggingface_hub`` sends it:

- ``POST /api/repos/create`` ``{name, organization, type, visibility}``: a new repo starts, as on the Hub, with one
  commit holding a ``.gitattributes`` that routes ``*.safetensors`` and images through Git LFS; 409 if it exists;
- ``POST /api/{type}s/{repo_id}/preupload/{revision}`` ``{files: [{path, sample, size}]}``: per file its upload
  mode (``lfs`` when the repo's ``.gitattributes`` says so, when the sample holds a NUL byte, or from 10 MB;
  ``regular`` otherwise), ``shouldIgnore`` and the oid of the file already there (git blob sha1, or the sha256 of an
  LFS file), which the client compares to skip unchanged files;
- ``POST /{prefix}{repo_id}.git/info/lfs/objects/batch``: the LFS batch API; objects the server lacks get an
  ``upload`` action (a ``PUT`` to this server) and a ``verify`` action, objects it has get none;
- ``POST /api/{type}s/{repo_id}/commit/{revision}``: the NDJSON commit (a ``header`` line, then ``file`` lines with
  base64 content, ``lfsFile`` lines naming an uploaded object by sha256, ``deletedFile``/``deletedFolder``); a
  commit naming an LFS object that was never uploaded is refused, as on the Hub;
- ``POST /api/{type}s/{repo_id}/branch/{branch}`` and ``/tag/{revision}``; ``POST /api/validate-yaml``.

Uploads go through the LFS path: tests set ``HF_HUB_DISABLE_XET`` (the Hub also accepts LFS uploads), since Xet
storage is a separate service. Errors carry the ``X-Error-Code`` the Hub uses (``RepoNotFound``,
``RevisionNotFound``, ``EntryNotFound``). With ``token`` set, writes and private repos need ``Authorization:
Bearer <token>``. ``commits_fail`` makes every commit answer 503, as a Hub that is down would.
"""
from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_GITATTRIBUTES = (
    "*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
    "*.bin filter=lfs diff=lfs merge=lfs -text\n"
    "*.pt filter=lfs diff=lfs merge=lfs -text\n"
    "*.png filter=lfs diff=lfs merge=lfs -text\n"
    "*.jpg filter=lfs diff=lfs merge=lfs -text\n"
    "*.jpeg filter=lfs diff=lfs merge=lfs -text\n"
    "*.zip filter=lfs diff=lfs merge=lfs -text\n"
).encode()
LFS_FROM_BYTES = 10 * 1024 * 1024


def git_blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_patterns(files: dict[str, bytes]) -> list[str]:
    text = files.get(".gitattributes", b"").decode(errors="replace")
    return [line.split()[0] for line in text.splitlines() if "filter=lfs" in line and line.split()]


def is_lfs(files: dict[str, bytes], path: str, size: int, sample: bytes) -> bool:
    name = path.rsplit("/", 1)[-1]
    by_pattern = any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(name, p) for p in lfs_patterns(files))
    return size > 0 and (by_pattern or b"\0" in sample or size >= LFS_FROM_BYTES)


class HubRepo:
    """A repo: named revisions (branches, tags, commits), each a {path: bytes} snapshot, and its commit history."""

    def __init__(self, repo_type: str = "model", private: bool = False):
        self.repo_type, self.private = repo_type, private
        self.revisions: dict[str, tuple[str, dict[str, bytes]]] = {}
        self.branches: set[str] = set()
        self.tags: set[str] = set()
        self.history: list[dict] = []  # every commit: {"branch", "oid", "summary", "changed", "deleted"}

    def add_revision(self, names: list[str], folder: Path) -> str:
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        commit = hashlib.sha1(b"".join(k.encode() + v for k, v in files.items())).hexdigest()
        for name in names + [commit]:
            self.revisions[name] = (commit, files)
        self.branches.update(names)
        return commit

    def files(self, revision: str = "main") -> dict[str, bytes]:
        return dict(self.revisions[revision][1])

    def commit(self, branch: str, changed: dict[str, bytes], deleted: list[str], summary: str) -> str:
        parent, files = self.revisions.get(branch, ("", {}))
        files = dict(files)
        for path in deleted:
            for name in [n for n in files if n == path or n.startswith(path.rstrip("/") + "/")]:
                del files[name]
        files.update(changed)
        oid = hashlib.sha1(parent.encode() + summary.encode() + json.dumps(
            {k: hashlib.sha256(v).hexdigest() for k, v in sorted(files.items())}).encode()).hexdigest()
        self.revisions[branch] = self.revisions[oid] = (oid, files)
        self.branches.add(branch)
        self.history.append({"branch": branch, "oid": oid, "summary": summary, "changed": sorted(changed),
                             "deleted": list(deleted)})
        return oid


class HubServer:
    def __init__(self, token: str | None = None, port: int = 0):
        self.repos: dict[str, HubRepo] = {}  # "owner/name" for models, "datasets/owner/name" for datasets
        self.requests: list[tuple[str, str]] = []
        self.lfs_objects: dict[str, bytes] = {}  # sha256 -> content, filled by the LFS uploads
        self.token = token
        self.commits_fail = False
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            # ---------------------------------------------------------------------------------------- plumbing

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline().strip():
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _send(self, status: int, body: bytes = b"", content_type: str = "application/json",
                      headers: dict | None = None, send_body: bool = True):
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if send_body:
                    self.wfile.write(body)

            def _json(self, status: int, value, headers: dict | None = None):
                self._send(status, json.dumps(value).encode(), headers=headers)

            def _error(self, status: int, code: str | None, message: str = "", send_body: bool = True):
                headers = {"X-Error-Message": message or code or "error"}
                if code:
                    headers["X-Error-Code"] = code
                self._send(status, json.dumps({"error": message or code}).encode(), headers=headers,
                           send_body=send_body)

            def _authorized(self) -> bool:
                return server.token is None or self.headers.get("Authorization") == f"Bearer {server.token}"

            def _repo(self, key: str, write: bool = False) -> HubRepo | None:
                repo = server.repos.get(key)
                if repo is None or ((repo.private or write) and not self._authorized()):
                    return None
                return repo

            def _parts(self) -> tuple[list[str], dict]:
                url = urlsplit(self.path)
                return [unquote(p) for p in url.path.strip("/").split("/")], parse_qs(url.query)

            # ---------------------------------------------------------------------------------------- download

            def _resolve(self, parts: list[str], send_body: bool):
                prefix = ""
                if parts[0] in ("datasets", "spaces"):
                    prefix, parts = parts[0] + "/", parts[1:]
                if len(parts) < 5 or parts[2] != "resolve":
                    return self._error(404, "RepoNotFound", send_body=send_body)
                repo = self._repo(prefix + "/".join(parts[:2]))
                revision, path = parts[3], "/".join(parts[4:])
                if repo is None:
                    return self._error(401, "RepoNotFound", send_body=send_body)
                if revision not in repo.revisions:
                    return self._error(404, "RevisionNotFound", send_body=send_body)
                commit, files = repo.revisions[revision]
                if path not in files:
                    return self._error(404, "EntryNotFound", send_body=send_body)
                body = files[path]
                self._send(200, body, "application/octet-stream", send_body=send_body, headers={
                    "X-Repo-Commit": commit, "ETag": '"' + hashlib.sha256(body).hexdigest() + '"'})

            def _entry(self, files: dict[str, bytes], path: str) -> dict:
                data = files[path]
                entry = {"type": "file", "path": path, "size": len(data), "oid": git_blob_sha(data)}
                if is_lfs(files, path, len(data), data[:512]):
                    entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                return entry

            def _api_get(self, parts: list[str], query: dict):
                kind, key, rest = parts[1], "/".join(parts[2:4]), parts[4:]
                repo = self._repo(key if kind == "models" else f"{kind}/{key}")
                if repo is None:
                    return self._error(404, "RepoNotFound")
                if not rest or rest[0] == "revision":
                    revision = rest[1] if len(rest) > 1 else "main"
                    if revision not in repo.revisions:
                        return self._error(404, "RevisionNotFound")
                    commit, files = repo.revisions[revision]
                    return self._json(200, {"id": key, "sha": commit, "private": repo.private,
                                            "siblings": [{"rfilename": p} for p in sorted(files)]})
                if rest[0] == "tree":
                    revision, under = rest[1], "/".join(rest[2:])
                    if revision not in repo.revisions:
                        return self._error(404, "RevisionNotFound")
                    files = repo.revisions[revision][1]
                    inside = [p for p in sorted(files) if not under or p.startswith(under.rstrip("/") + "/")]
                    if query.get("recursive", ["False"])[0].lower() != "true":
                        depth = len(under.split("/")) if under else 0
                        folders = sorted({"/".join(p.split("/")[:depth + 1]) for p in inside
                                          if len(p.split("/")) > depth + 1})
                        inside = [p for p in inside if len(p.split("/")) == depth + 1]
                        return self._json(200, [{"type": "directory", "path": f, "oid": "0" * 40} for f in folders]
                                          + [self._entry(files, p) for p in inside])
                    return self._json(200, [self._entry(files, p) for p in inside])
                if rest[0] == "refs":
                    return self._json(200, {
                        "branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": repo.revisions[b][0]}
                                     for b in sorted(repo.branches)],
                        "tags": [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": repo.revisions[t][0]}
                                 for t in sorted(repo.tags)],
                        "converts": []})
                return self._error(404, None, "unknown endpoint")

            # ------------------------------------------------------------------------------------------ upload

            def _create_repo(self, payload: dict):
                if not self._authorized():
                    return self._error(401, None, "Invalid credentials in Authorization header")
                kind = payload.get("type") or "model"
                repo_id = f"{payload.get('organization')}/{payload['name']}"
                key = repo_id if kind == "model" else f"{kind}s/{repo_id}"
                url = f"{server.endpoint}/{key}"
                with server.lock:
                    if key in server.repos:
                        return self._json(409, {"error": "You already created this repo", "url": url})
                    repo = HubRepo(kind, private=payload.get("visibility") == "private" or payload.get("private") is True)
                    repo.commit("main", {".gitattributes": DEFAULT_GITATTRIBUTES}, [], "initial commit")
                    server.repos[key] = repo
                self._json(200, {"url": url, "name": repo_id, "id": repo_id})

            def _preupload(self, repo: HubRepo, revision: str, payload: dict):
                files = repo.revisions[revision][1] if revision in repo.revisions else repo.files("main")
                answer = []
                for item in payload["files"]:
                    sample = base64.b64decode(item["sample"])
                    entry = {"path": item["path"], "shouldIgnore": False,
                             "uploadMode": "lfs" if is_lfs(files, item["path"], item["size"], sample) else "regular"}
                    if item["path"] in files:
                        existing = self._entry(files, item["path"])
                        entry["oid"] = existing["lfs"]["oid"] if "lfs" in existing else existing["oid"]
                    answer.append(entry)
                self._json(200, {"files": answer, "commitOid": repo.revisions.get(revision, ("",))[0]})

            def _lfs_batch(self, payload: dict):
                objects = []
                for obj in payload["objects"]:
                    item = {"oid": obj["oid"], "size": obj["size"]}
                    if obj["oid"] not in server.lfs_objects:
                        item["actions"] = {
                            "upload": {"href": f"{server.endpoint}/lfs-upload/{obj['oid']}"},
                            "verify": {"href": f"{server.endpoint}/lfs-verify"},
                        }
                    objects.append(item)
                self._send(200, json.dumps({"transfer": "basic", "objects": objects}).encode(),
                           "application/vnd.git-lfs+json")

            def _commit(self, key: str, repo: HubRepo, branch: str, body: bytes):
                if server.commits_fail:
                    return self._error(503, None, "Service Unavailable")
                lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                header = next(line["value"] for line in lines if line["key"] == "header")
                changed, deleted = {}, []
                for line in lines:
                    value = line["value"]
                    if line["key"] == "file":
                        changed[value["path"]] = base64.b64decode(value["content"])
                    elif line["key"] == "lfsFile":
                        if value["oid"] not in server.lfs_objects:
                            return self._error(422, None, f"LFS object {value['oid']} of {value['path']} is missing")
                        changed[value["path"]] = server.lfs_objects[value["oid"]]
                    elif line["key"] in ("deletedFile", "deletedFolder"):
                        deleted.append(value["path"])
                with server.lock:
                    if branch not in repo.branches:
                        return self._error(404, "RevisionNotFound", f"Invalid rev id: {branch}")
                    oid = repo.commit(branch, changed, deleted, header["summary"])
                self._json(200, {"commitUrl": f"{server.endpoint}/{key}/commit/{oid}", "commitOid": oid,
                                 "pullRequestUrl": None})

            def do_HEAD(self):
                server.requests.append((self.command, self.path))
                self._resolve(self._parts()[0], send_body=False)

            def do_GET(self):
                server.requests.append((self.command, self.path))
                parts, query = self._parts()
                if parts[0] == "api" and len(parts) >= 4 and parts[1] in ("models", "datasets", "spaces"):
                    return self._api_get(parts, query)
                self._resolve(parts, send_body=True)

            def do_PUT(self):
                server.requests.append((self.command, self.path))
                parts, _ = self._parts()
                body = self._body()
                if parts[0] != "lfs-upload" or hashlib.sha256(body).hexdigest() != parts[1]:
                    return self._error(400, None, "content does not match its oid")
                server.lfs_objects[parts[1]] = body
                self._send(200)

            def do_POST(self):
                server.requests.append((self.command, self.path))
                parts, query = self._parts()
                body = self._body()
                if parts[:3] == ["api", "repos", "create"]:
                    return self._create_repo(json.loads(body))
                if parts[:2] == ["api", "validate-yaml"]:
                    return self._json(200, {"errors": [], "warnings": []})
                if parts[0] == "lfs-verify":
                    oid = json.loads(body)["oid"]
                    return self._send(200) if oid in server.lfs_objects else self._error(404, None, "not uploaded")
                if parts[-4:] == ["info", "lfs", "objects", "batch"]:
                    key = "/".join(parts[:-4])
                    key = key[:-4] if key.endswith(".git") else key
                    if self._repo(key, write=True) is None:
                        return self._error(404, "RepoNotFound")
                    return self._lfs_batch(json.loads(body))
                if parts[0] == "api" and len(parts) >= 6 and parts[1] in ("models", "datasets", "spaces"):
                    kind, key, action, rev = parts[1], "/".join(parts[2:4]), parts[4], "/".join(parts[5:])
                    key = key if kind == "models" else f"{kind}/{key}"
                    repo = self._repo(key, write=True)
                    if repo is None:
                        return self._error(404, "RepoNotFound")
                    if action == "preupload":
                        return self._preupload(repo, rev, json.loads(body))
                    if action == "commit":
                        return self._commit(key, repo, rev, body)
                    if action == "branch":
                        start = (json.loads(body or b"{}").get("startingPoint")) or "main"
                        with server.lock:
                            if rev in repo.branches:
                                return self._error(409, None, f"Reference {rev} already exists")
                            if start not in repo.revisions:
                                return self._error(404, "RevisionNotFound")
                            repo.revisions[rev] = repo.revisions[start]
                            repo.branches.add(rev)
                        return self._json(200, {})
                    if action == "tag":
                        tag = json.loads(body)["tag"]
                        with server.lock:
                            if tag in repo.revisions:
                                return self._error(409, None, f"Tag {tag} already exists")
                            if rev not in repo.revisions:
                                return self._error(404, "RevisionNotFound")
                            repo.revisions[tag] = repo.revisions[rev]
                            repo.tags.add(tag)
                        return self._json(200, {})
                self._error(404, None, "unknown endpoint")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def dataset(self, repo_id: str) -> HubRepo | None:
        return self.repos.get(f"datasets/{repo_id}")

    def __enter__(self) -> "HubServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
