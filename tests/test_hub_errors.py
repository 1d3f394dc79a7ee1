"""What a user sees when a model or transcoder set named by Hub id cannot be fetched: one line that names
the problem and the fix, for a gated repo, a missing or rejected token, an unknown id and no network.

huggingface_hub runs unchanged against a small HTTP server on 127.0.0.1 (`HubStandIn`) that answers the
requests it makes (`GET /api/models/{repo}/revision/{rev}`, `GET /api/models/{repo}/tree/{rev}`,
`HEAD`/`GET /{repo}/resolve/{rev}/{file}`) with the status codes and `X-Error-Code` / `X-Error-Message`
headers the Hub sends. "No network" is a closed port on 127.0.0.1. Every request huggingface_hub makes is
checked to stay on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx2
import pytest
import torch
from huggingface_hub import constants, set_client_factory
from huggingface_hub.utils import http_backoff
from huggingface_hub.utils._http import default_client_factory

from circuitbase.engine import transcoder_sources
from circuitbase.engine.models import ModelLoadError, load_model
from circuitbase.engine.transcoders import TranscoderError, TranscoderSet
from tests.hf_cache import add_repo, folder_files
from tests.tiny_models import FIXTURE_MODEL_DIR, tiny_input_ids

SET_DIR = Path(__file__).parent / "fixtures" / "circuit-tracer-format" / "plt-relu"
GATED = "tiny-org/gated"  # exists, files need accepted terms
PUBLIC_MODEL = "tiny-org/tiny-llama"
PUBLIC_SET = "tiny-org/tiny-transcoders"
NO_CONFIG = "tiny-org/no-config"  # exists, has no config.yaml
UNKNOWN = "nobody/no-such-repo"
VALID_TOKEN = "hf_valid_but_not_granted"
BAD_TOKEN = "hf_revoked"
LOGIN = "run `hf auth login` or set HF_TOKEN"


@dataclass
class HubStandIn:
    """Repos (name -> files) served as the Hub serves them; `requests` logs (method, host, path)."""

    repos: dict[str, dict[str, bytes]]
    gated: set[str]
    requests: list[tuple[str, str, str]] = field(default_factory=list)

    @staticmethod
    def commit(repo: str) -> str:
        return hashlib.sha1(repo.encode()).hexdigest()

    def answer(self, method: str, path: str, authorization: str | None) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) for one request, as the Hub answers it."""
        token = authorization.removeprefix("Bearer ") if authorization else None
        if token is not None and token != VALID_TOKEN:
            return 401, {"X-Error-Message": "Invalid credentials in Authorization header"}, b""
        api = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(revision|tree)/([^/]+)", path)
        resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if api is None and resolve is None:
            return 404, {}, b"Not Found"
        repo, revision = (api[1], api[3]) if api else (resolve[1], resolve[2])
        if repo not in self.repos:  # 401 without a token: the Hub does not tell a private repo apart
            return 401 if token is None else 404, {"X-Error-Code": "RepoNotFound"}, b""
        commit = self.commit(repo)
        if revision not in ("main", commit):
            return 404, {"X-Error-Code": "RevisionNotFound"}, b""
        files = self.repos[repo]
        if api is not None and api[2] == "revision":  # metadata: public, gated or not
            siblings = [{"rfilename": name} for name in files]
            info = {"id": repo, "sha": commit, "gated": "manual" if repo in self.gated else False}
            return (
                200,
                {"Content-Type": "application/json"},
                json.dumps(info | {"siblings": siblings}).encode(),
            )
        if api is not None:  # the file listing: public too
            tree = [
                {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                for name, data in files.items()
            ]
            return 200, {"Content-Type": "application/json"}, json.dumps(tree).encode()
        if repo in self.gated:
            headers = {
                "X-Error-Code": "GatedRepo",
                "X-Error-Message": f"Access to model {repo} is restricted.",
            }
            return 401 if token is None else 403, headers, b""
        name = unquote(resolve[3])
        if name not in files:
            return 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit}, b""
        data = files[name]
        etag = f'"{hashlib.sha256(data).hexdigest()}"'
        headers = {"X-Repo-Commit": commit, "ETag": etag, "Content-Length": str(len(data))}
        return 200, headers, data if method == "GET" else b""

    @contextmanager
    def serve(self) -> Iterator[str]:
        """Run on 127.0.0.1 with an ephemeral port in a thread; yields the endpoint URL."""
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:
                self.reply("HEAD")

            def do_GET(self) -> None:
                self.reply("GET")

            def reply(self, method: str) -> None:
                path = urlsplit(self.path).path
                hub.requests.append((method, self.headers.get("Host", ""), path))
                status, headers, body = hub.answer(method, path, self.headers.get("Authorization"))
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                if "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_port}"
        finally:
            server.shutdown()
            server.server_close()
            thread.join()


def _point_hub_at(endpoint: str, cache: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Send huggingface_hub to `endpoint` with an empty cache, online, no token and quick retries; returns
    the list that collects any request URL not on 127.0.0.1 (such a request is also refused)."""
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    # read once, at import: the endpoint, the URL template built from it, cache, offline flag, token file
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(cache.parent / "no-token-file"))
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 5)
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 5)
    for name in (
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_OIDC_RESOURCE",
    ):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    # huggingface_hub retries a refused connection 5 times, sleeping 1, 2, 4, 8, 8 s: no sleeping here
    monkeypatch.setitem(http_backoff.__kwdefaults__, "base_wait_time", 0.0)
    monkeypatch.setitem(http_backoff.__kwdefaults__, "max_wait_time", 0.0)
    elsewhere: list[str] = []

    def loopback_only(request: httpx2.Request) -> None:
        if request.url.host != "127.0.0.1":
            elsewhere.append(str(request.url))
            raise httpx2.ConnectError(f"test refuses {request.url}: not on 127.0.0.1", request=request)

    def client() -> httpx2.Client:
        session = default_client_factory()
        session.event_hooks["request"].append(loopback_only)
        return session

    set_client_factory(client)
    return elsewhere


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubStandIn]:
    """huggingface_hub pointed at a Hub stand-in holding a gated repo, a model, a set and a set-less repo."""
    model = {name: path.read_bytes() for name, path in folder_files(FIXTURE_MODEL_DIR).items()}
    tiny_set = {name: path.read_bytes() for name, path in folder_files(SET_DIR).items()}
    repos = {
        GATED: model | tiny_set,
        PUBLIC_MODEL: model,
        PUBLIC_SET: tiny_set,
        NO_CONFIG: {"README.md": b"x"},
    }
    stand_in = HubStandIn(repos=repos, gated={GATED})
    with stand_in.serve() as endpoint:
        elsewhere = _point_hub_at(endpoint, tmp_path / "hf-cache", monkeypatch)
        try:
            yield stand_in
        finally:
            set_client_factory(default_client_factory)
    assert elsewhere == []
    assert stand_in.requests and all(host == urlsplit(endpoint).netloc for _, host, _ in stand_in.requests)


@pytest.fixture
def no_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """huggingface_hub pointed at a closed port on 127.0.0.1 (connection refused); yields the empty cache."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again when the block ends: nothing listens there
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    elsewhere = _point_hub_at(f"http://127.0.0.1:{port}", cache, monkeypatch)
    yield cache
    set_client_factory(default_client_factory)
    assert elsewhere == []


def _model_error(spec: str, **kwargs: str) -> str:
    with pytest.raises(ModelLoadError) as caught:
        load_model(spec, **kwargs)
    return _one_line(str(caught.value))


def _set_error(spec: str) -> str:
    with pytest.raises(TranscoderError) as caught:
        TranscoderSet.load(spec)
    return _one_line(str(caught.value))


def _one_line(message: str) -> str:
    print(message)  # shown with -s: what the user reads
    assert "\n" not in message
    return message


# -- gated repo ------------------------------------------------------------------------------------------


def test_gated_repo_without_token_says_accept_terms_then_log_in(hub: HubStandIn) -> None:
    page = f"{constants.ENDPOINT}/{GATED}"
    want = (
        f"{GATED} is a gated repo and no Hugging Face token is set: accept its terms at {page}, then {LOGIN}"
    )
    assert _model_error(GATED) == f"model {GATED!r}: {want}"
    assert _set_error(GATED) == f"transcoders {GATED!r}: {want}"
    # the model's metadata and listing are public: the refusal came on a file
    assert ("HEAD", f"/{GATED}/resolve/main/config.yaml") in {(m, p) for m, _, p in hub.requests}
    assert any(
        m == "HEAD" and p.startswith(f"/{GATED}/resolve/{hub.commit(GATED)}/") for m, _, p in hub.requests
    )


def test_gated_repo_with_token_says_accept_terms_with_that_account(
    hub: HubStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", VALID_TOKEN)
    page = f"{constants.ENDPOINT}/{GATED}"
    want = (
        f"{GATED} is a gated repo your token cannot read yet: accept its terms at {page} with the account "
        "of that token (approval can take a while)"
    )
    assert _model_error(GATED) == f"model {GATED!r}: {want}"
    monkeypatch.setitem(transcoder_sources.PRESETS, "gemma", GATED)
    assert _set_error("gemma") == f"transcoders 'gemma': {want}"


# -- token -----------------------------------------------------------------------------------------------


def test_rejected_token_says_log_in_again(hub: HubStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", BAD_TOKEN)
    want = f"the Hugging Face Hub rejected the token for {{repo}}: {LOGIN} with a valid one"
    assert _model_error(PUBLIC_MODEL) == f"model {PUBLIC_MODEL!r}: " + want.format(repo=PUBLIC_MODEL)
    assert _set_error(PUBLIC_SET) == f"transcoders {PUBLIC_SET!r}: " + want.format(repo=PUBLIC_SET)


# -- unknown id ------------------------------------------------------------------------------------------


def test_unknown_id_says_check_it_or_log_in_if_private(
    hub: HubStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    without_token = f"no repo {UNKNOWN!r} on the Hugging Face Hub: check the id (if it is private, {LOGIN})"
    assert _model_error(UNKNOWN) == f"model {UNKNOWN!r}: {without_token}"
    assert _set_error(UNKNOWN) == f"transcoders {UNKNOWN!r}: {without_token}"
    assert _set_error(f"hf://{UNKNOWN}/plt") == f"transcoders 'hf://{UNKNOWN}/plt': {without_token}"
    monkeypatch.setenv("HF_TOKEN", VALID_TOKEN)  # the Hub answers 404 instead of 401
    with_token = (
        f"no repo {UNKNOWN!r} on the Hugging Face Hub: check the id (your token cannot read it if it is "
    )
    with_token += "private)"
    assert _model_error(UNKNOWN) == f"model {UNKNOWN!r}: {with_token}"
    assert _set_error(UNKNOWN) == f"transcoders {UNKNOWN!r}: {with_token}"


def test_unknown_revision_and_missing_config_name_what_is_missing(hub: HubStandIn) -> None:
    assert _model_error(PUBLIC_MODEL, revision="v9") == (
        f"model {PUBLIC_MODEL!r}: repo {PUBLIC_MODEL!r} has no revision 'v9': check the branch, tag or commit"
    )
    assert _set_error(f"{PUBLIC_SET}@v9") == (
        f"transcoders '{PUBLIC_SET}@v9': repo {PUBLIC_SET!r} has no revision 'v9': "
        "check the branch, tag or commit"
    )
    assert _set_error(NO_CONFIG) == f"transcoders {NO_CONFIG!r}: repo {NO_CONFIG} has no file 'config.yaml'"


# -- no network ------------------------------------------------------------------------------------------


def test_no_network_says_connect_or_use_a_cache(no_network: Path) -> None:
    def want(what: str) -> str:
        return (
            f"cannot reach the Hugging Face Hub at {constants.ENDPOINT} to fetch hf://{what} and it is "
            "not in the cache: connect to the network (check any proxy), or download it once where the Hub "
            "is reachable and point HF_HUB_CACHE at that cache"
        )

    assert _model_error(PUBLIC_MODEL) == f"model {PUBLIC_MODEL!r}: {want(PUBLIC_MODEL)}"
    assert _set_error(PUBLIC_SET) == f"transcoders {PUBLIC_SET!r}: {want(PUBLIC_SET + '/config.yaml')}"


@torch.no_grad()
def test_no_network_loads_what_the_cache_holds(no_network: Path) -> None:
    add_repo(no_network, PUBLIC_MODEL, folder_files(FIXTURE_MODEL_DIR))
    add_repo(no_network, PUBLIC_SET, folder_files(SET_DIR))
    ids = tiny_input_ids()
    assert torch.equal(
        load_model(PUBLIC_MODEL).model(ids).logits, load_model(str(FIXTURE_MODEL_DIR)).model(ids).logits
    )
    assert TranscoderSet.load(PUBLIC_SET).name == PUBLIC_SET


# -- the stand-in answers like the Hub: what it serves downloads and loads -------------------------------


@torch.no_grad()
def test_public_repos_download_into_the_cache(hub: HubStandIn, tmp_path: Path) -> None:
    ids = tiny_input_ids()
    by_id = load_model(PUBLIC_MODEL)
    assert torch.equal(by_id.model(ids).logits, load_model(str(FIXTURE_MODEL_DIR)).model(ids).logits)
    loaded = TranscoderSet.load(PUBLIC_SET)
    local = TranscoderSet.load(SET_DIR)
    for got, want in zip(loaded.W_enc, local.W_enc, strict=True):
        assert torch.equal(got, want)
    snapshot = (
        tmp_path / "hf-cache" / "models--tiny-org--tiny-transcoders" / "snapshots" / hub.commit(PUBLIC_SET)
    )
    assert sorted(p.name for p in snapshot.iterdir()) == [
        "config.yaml",
        "layer_0.safetensors",
        "layer_1.safetensors",
    ]
