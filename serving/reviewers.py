"""Reviewer tokens: who may send ``/feedback``, and under which name each feedback row is stored.

Feedback is training data: a retrain learns from it, so whoever can post it can steer the next model
(a poisoning path). When reviewer tokens are configured, ``/feedback`` needs ``Authorization: Bearer
<token>`` and stores the token's reviewer name with the row; without tokens it is open, and then only
a service bound to a loopback address may start (:func:`check_bind`): on ``127.0.0.1`` only this
machine can reach it.

Tokens come from ``TUNELOOP_REVIEWER_TOKENS`` (``"alice:TOKEN1,bob:TOKEN2"``) and/or the file named by
``TUNELOOP_REVIEWER_TOKENS_FILE``: one ``name:token`` per line (blank lines and ``#`` comments
skipped), or JSON (``{"alice": "TOKEN1"}`` or ``[{"name": "alice", "token": "TOKEN1"}]``). The file
must not be readable or writable by other users (``chmod 600``; in Kubernetes a secret volume with
``defaultMode: 0400``), as ssh refuses such a key file. Tokens are compared in constant time
(:meth:`ReviewerTokens.reviewer_of`: SHA-256 digests, every token compared, no early exit) and never
logged or shown (``repr`` lists the names only).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

TOKENS_ENV = "TUNELOOP_REVIEWER_TOKENS"
TOKENS_FILE_ENV = "TUNELOOP_REVIEWER_TOKENS_FILE"
# 16 characters: 96 bits as URL-safe base64 (`python -c "import secrets; print(secrets.token_urlsafe(16))"`
# prints 22), beyond any online guessing; shorter strings are typos or placeholders ("changeme").
MIN_TOKEN_CHARS = 16
MAX_TOKEN_CHARS = 256  # and the Authorization header is refused unread beyond this plus "Bearer "
MAX_HEADER_CHARS = MAX_TOKEN_CHARS + 16
MAX_REVIEWERS = 1000
MAX_FILE_BYTES = 1_048_576
# Reviewer names land in feedback.reviewer (128 characters) and in --exclude-reviewer; e-mail addresses fit.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")
TOKEN_PATTERN = re.compile(r"[\x21-\x7e]+")  # printable ASCII without spaces: survives a header and a shell


class ReviewerConfigError(ValueError):
    """Reviewer tokens that cannot be used; the message names the variable or file and how to fix it."""


@dataclass(frozen=True)
class ReviewerTokens:
    """The configured reviewers, each with one bearer token.

    Attributes:
        names: reviewer names, in configuration order.
    """

    names: tuple[str, ...] = ()
    _digests: tuple[bytes, ...] = field(default=(), repr=False)

    @classmethod
    def from_pairs(cls, pairs: list[tuple[str, str]], source: str) -> ReviewerTokens:
        """Validated tokens from ``(name, token)`` pairs.

        Raises:
            ReviewerConfigError: a bad name, a token shorter than :data:`MIN_TOKEN_CHARS` or with spaces
                or non-ASCII characters, a name or token given twice, or more than :data:`MAX_REVIEWERS`.
        """
        if len(pairs) > MAX_REVIEWERS:
            raise ReviewerConfigError(f"{source}: {len(pairs)} reviewers, at most {MAX_REVIEWERS}")
        names, digests = [], []
        for number, (name, token) in enumerate(pairs, 1):
            where = f"{source}, reviewer {number}"
            if not NAME_PATTERN.fullmatch(name):
                raise ReviewerConfigError(f"{where}: the name {name[:40]!r} must be 1-128 characters of "
                                          "A-Z a-z 0-9 . _ @ + - (starting with a letter or digit)")
            if not (MIN_TOKEN_CHARS <= len(token) <= MAX_TOKEN_CHARS) or not TOKEN_PATTERN.fullmatch(token):
                raise ReviewerConfigError(
                    f"{where} ({name}): a token must be {MIN_TOKEN_CHARS}-{MAX_TOKEN_CHARS} printable ASCII "
                    "characters without spaces; make one with "
                    "`python -c \"import secrets; print(secrets.token_urlsafe(16))\"`")
            digest = hashlib.sha256(token.encode()).digest()
            if name in names:
                raise ReviewerConfigError(f"{where}: reviewer {name} is configured twice")
            if digest in digests:
                raise ReviewerConfigError(f"{where} ({name}): two reviewers share one token, so feedback could "
                                          "not be told apart; give each reviewer a token of their own")
            names.append(name)
            digests.append(digest)
        return cls(tuple(names), tuple(digests))

    def __bool__(self) -> bool:
        return bool(self.names)

    def reviewer_of(self, token: str) -> str | None:
        """The name of the reviewer whose token ``token`` is, or None.

        Constant time in the token: its SHA-256 digest is compared with every configured digest by
        ``hmac.compare_digest`` (no early exit), so the time taken says nothing about how much of a
        token matched or which reviewer's it was.
        """
        given = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found = None
        for name, digest in zip(self.names, self._digests, strict=True):
            if hmac.compare_digest(given, digest):
                found = name
        return found

    def reviewer_of_header(self, authorization: str | None) -> str | None:
        """The reviewer named by an ``Authorization`` header value (``Bearer <token>``), or None when
        it is missing, longer than :data:`MAX_HEADER_CHARS`, of another scheme, or a token nobody has."""
        if not authorization or len(authorization) > MAX_HEADER_CHARS:
            return None
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        return self.reviewer_of(token)


def parse_pairs(text: str, source: str) -> list[tuple[str, str]]:
    """``name:token`` entries separated by commas or new lines (blank entries and ``#`` lines skipped).

    Raises:
        ReviewerConfigError: an entry without ``:``.
    """
    pairs = []
    for number, line in enumerate(re.split(r"[,\n]", text), 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        name, sep, token = entry.partition(":")
        if not sep:
            raise ReviewerConfigError(f"{source}, entry {number}: expected name:token (the token itself is not shown)")
        pairs.append((name.strip(), token.strip()))
    return pairs


def read_token_file(path: Path) -> list[tuple[str, str]]:
    """The ``(name, token)`` pairs of a token file (lines or JSON, see the module docstring).

    Raises:
        ReviewerConfigError: the file is missing, larger than 1 MiB, readable or writable by other users,
            or not in one of the two formats.
    """
    source = f"{TOKENS_FILE_ENV}={path}"
    try:
        info = path.stat()
    except OSError as exc:
        raise ReviewerConfigError(f"{source}: cannot read it ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise ReviewerConfigError(f"{source}: not a regular file")
    if info.st_mode & (stat.S_IROTH | stat.S_IWOTH):
        raise ReviewerConfigError(f"{source}: other users can read or write it (mode {stat.S_IMODE(info.st_mode):o}); "
                                  f"run `chmod 600 {path}` (Kubernetes: defaultMode 0400 on the secret volume)")
    if info.st_size > MAX_FILE_BYTES:
        raise ReviewerConfigError(f"{source}: {info.st_size} bytes, at most {MAX_FILE_BYTES}")
    text = path.read_text(encoding="utf-8", errors="strict")
    if text.lstrip().startswith(("{", "[")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ReviewerConfigError(f"{source}: invalid JSON at line {exc.lineno}") from None
        if isinstance(data, dict) and all(isinstance(v, str) for v in data.values()):
            return [(str(k), v) for k, v in data.items()]
        if isinstance(data, list) and all(isinstance(d, dict) and isinstance(d.get("name"), str)
                                          and isinstance(d.get("token"), str) for d in data):
            return [(d["name"], d["token"]) for d in data]
        raise ReviewerConfigError(f'{source}: JSON must be {{"name": "token", ...}} or '
                                  '[{"name": ..., "token": ...}, ...]')
    return parse_pairs(text, source)


def load_reviewers(tokens: str | None = None, tokens_file: Path | str | None = None) -> ReviewerTokens:
    """The reviewers of ``TUNELOOP_REVIEWER_TOKENS`` (``tokens``) and ``TUNELOOP_REVIEWER_TOKENS_FILE``
    (``tokens_file``), both when both are given; empty when neither is.

    Raises:
        ReviewerConfigError: see :meth:`ReviewerTokens.from_pairs`, :func:`parse_pairs`, :func:`read_token_file`.
    """
    pairs = parse_pairs(tokens, TOKENS_ENV) if tokens else []
    if tokens_file:
        pairs += read_token_file(Path(tokens_file))
    return ReviewerTokens.from_pairs(pairs, " + ".join(
        s for s, given in ((TOKENS_ENV, tokens), (TOKENS_FILE_ENV, tokens_file)) if given) or "reviewer tokens")


def reviewers_from_env(environ: Mapping[str, str] | None = None) -> ReviewerTokens:
    """:func:`load_reviewers` of the two variables in ``environ`` (``os.environ`` when None)."""
    environ = os.environ if environ is None else environ
    return load_reviewers(environ.get(TOKENS_ENV, "").strip() or None, environ.get(TOKENS_FILE_ENV, "").strip() or None)


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps a server reachable from this machine only: a loopback IP address
    (``127.0.0.0/8``, ``::1``) or ``localhost``. ``0.0.0.0``, ``::`` and every other name are not."""
    host = host.strip().strip("[]")
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, reviewers: ReviewerTokens) -> None:
    """Refuse to serve open feedback beyond this machine.

    Raises:
        ReviewerConfigError: ``host`` is not a loopback address and no reviewer token is configured.
    """
    if not reviewers and not is_loopback(host):
        raise ReviewerConfigError(
            f"refusing to bind {host} without reviewer tokens: anyone who reaches the service could post "
            f"/feedback and steer the next retrain. Set {TOKENS_ENV} (\"alice:TOKEN,bob:TOKEN\") or "
            f"{TOKENS_FILE_ENV} (tuneloop serve --reviewer-tokens-file), or bind 127.0.0.1")


def reviewers_of(config) -> ReviewerTokens:
    """The reviewers of a :class:`tuneloop.serving.config.ServeConfig` (its ``reviewer_tokens`` and
    ``reviewer_tokens_file``).

    Raises:
        ReviewerConfigError: see :func:`load_reviewers`.
    """
    tokens = config.reviewer_tokens.get_secret_value() if config.reviewer_tokens is not None else None
    return load_reviewers(tokens, config.reviewer_tokens_file)


CHALLENGE = 'Bearer realm="tuneloop-feedback", error="invalid_token"'  # WWW-Authenticate of a 401 (RFC 6750)


@dataclass(frozen=True)
class FeedbackAccess:
    """Whether one ``/feedback`` request may write: ``status`` None and its ``reviewer`` (None without
    reviewer tokens), or the refusal's ``status`` (401, 403) and ``message``."""

    reviewer: str | None = None
    status: int | None = None
    message: str | None = None


def feedback_access(reviewers: ReviewerTokens, authorization: str | None, server_host: str | None) -> FeedbackAccess:
    """Decide one ``/feedback`` request.

    Args:
        reviewers: the configured reviewers.
        authorization: the request's ``Authorization`` header (None when absent).
        server_host: the local address the request arrived on (the ASGI scope's ``server`` host).

    Returns:
        With reviewers: the reviewer of the bearer token, or 401 (missing, malformed, oversize or
        unknown token). Without: no reviewer, or 403 when the request arrived on an IP address that is
        not loopback (the service is reachable from other machines although it should not be: e.g. a
        plain ``bentoml serve --host 0.0.0.0``); host names (a test client's ``testserver``) are not judged.
    """
    if reviewers:
        reviewer = reviewers.reviewer_of_header(authorization)
        if reviewer is None:
            return FeedbackAccess(status=401, message="missing or wrong reviewer token: send 'Authorization: Bearer "
                                                      f"<your reviewer token>' (the tokens of {TOKENS_ENV})")
        return FeedbackAccess(reviewer=reviewer)
    host = (server_host or "").strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return FeedbackAccess()
    if is_loopback(host):
        return FeedbackAccess()
    return FeedbackAccess(status=403, message="feedback from other machines needs a reviewer token and none is "
                                              f"configured: start the service with {TOKENS_ENV}")
