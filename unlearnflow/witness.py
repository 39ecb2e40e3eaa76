"""A witness for erasure logs (c2sp.org/tlog-witness): it cosigns a log's checkpoint only if
it extends the last one it cosigned, so an operator who rewrites history is refused by
someone they do not control (a privacy officer, an outside auditor).

    POST <prefix>/add-checkpoint     body: "old <size>\\n", consistency proof lines (base64),
                                     a blank line, the signed checkpoint

    200  cosignature line(s) (c2sp.org/tlog-cosignature, key type 0x04)
    400  a malformed body, or old > the checkpoint's size
    403  no valid signature by the log's key      404  a log this witness does not follow
    409  old is not the size it last cosigned (the body says that size), or the same size
         with another root                       422  the consistency proof does not verify

The witness's directory holds its Ed25519 key (``witness.key``, 0600), its name, and per
log followed the log's verifier key and the newest checkpoint it cosigned, checked and
replaced under one lock (``logs/<id>.json``), so two requests cannot roll it back.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from unlearnflow.durable import FileLock, atomic_write
from unlearnflow.receipt_verify import (COSIGNATURE, VerifierKey, VerifyError, cosigned_message, open_checkpoint,
                                        parse_vkey, verify_consistency)

MAX_PROOF_LINES = 63


@dataclass(frozen=True)
class Answer:
    status: int
    body: str
    content_type: str = "text/plain; charset=utf-8"


class Witness:
    def __init__(self, directory: Path, name: str | None = None):
        """Open (or, given ``name``, create) the witness kept in ``directory``."""
        self.dir = Path(directory)
        key_file, name_file = self.dir / "witness.key", self.dir / "name"
        if not key_file.is_file():
            if not name:
                raise ValueError(f"{self.dir} holds no witness; give it a name to create one")
            if " " in name or "+" in name:
                raise ValueError(f"witness name {name!r} must hold no space or '+'")
            (self.dir / "logs").mkdir(parents=True, exist_ok=True)
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(Ed25519PrivateKey.generate().private_bytes(
                    serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()))
            atomic_write(name_file, (name + "\n").encode())
        self.name = name_file.read_text().strip()
        if name and name != self.name:
            raise ValueError(f"{self.dir} is the witness {self.name!r}, not {name!r}")
        self._private = Ed25519PrivateKey.from_private_bytes(key_file.read_bytes())

    @property
    def key(self) -> VerifierKey:
        public = self._private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return VerifierKey(self.name, COSIGNATURE, public)

    def _state_file(self, origin: str) -> Path:
        return self.dir / "logs" / f"{hashlib.sha256(origin.encode()).hexdigest()[:16]}.json"

    def follow(self, log_vkey: str) -> None:
        """Trust ``log_vkey`` (a log's verifier key, type 0x01) for the log of its name."""
        key = parse_vkey(log_vkey)
        path = self._state_file(key.name)
        with self._locked():
            state = json.loads(path.read_text()) if path.is_file() else {"origin": key.name, "size": 0, "root": None}
            state["vkey"] = key.text
            atomic_write(path, json.dumps(state, indent=1).encode())

    def logs(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted((self.dir / "logs").glob("*.json"))]

    def _locked(self):
        return FileLock(self.dir / "lock", mode=0o600)

    def add_checkpoint(self, body: str) -> Answer:
        """One ``add-checkpoint`` request, checked and (when it extends what was cosigned)
        recorded and cosigned atomically."""
        try:
            old, proof, checkpoint = _parse_request(body)
        except ValueError as e:
            return Answer(400, f"{e}\n")
        origin = checkpoint.split("\n", 1)[0]
        path = self._state_file(origin)
        with self._locked():
            if not path.is_file():
                return Answer(404, f"unknown log {origin!r}\n")
            state = json.loads(path.read_text())
            try:
                cp = open_checkpoint(checkpoint, parse_vkey(state["vkey"]))
            except VerifyError as e:
                return Answer(403 if e.check == "signature" else 400, f"{e}\n")
            if old > cp.size:
                return Answer(400, f"old size {old} is larger than the checkpoint's {cp.size}\n")
            if old != state["size"]:
                return Answer(409, f"{state['size']}\n", "text/x.tlog.size")
            if old == cp.size:
                if proof or (state["root"] is not None and base64.b64decode(state["root"]) != cp.root):
                    return Answer(409, f"{state['size']}\n", "text/x.tlog.size")
            elif old > 0:
                try:
                    verify_consistency(old, cp.size, proof, base64.b64decode(state["root"]), cp.root)
                except VerifyError as e:
                    return Answer(422, f"{e}\n")
            elif proof:
                return Answer(422, "the proof must be empty when old is 0\n")
            state.update(size=cp.size, root=base64.b64encode(cp.root).decode(), cosigned_at=int(time.time()))
            atomic_write(path, json.dumps(state, indent=1).encode())
        return Answer(200, self.cosign(cp.note.text, state["cosigned_at"]))

    def cosign(self, checkpoint_text: str, timestamp: int) -> str:
        signature = self._private.sign(cosigned_message(checkpoint_text, timestamp))
        raw = self.key.id + timestamp.to_bytes(8, "big") + signature
        return f"\u2014 {self.name} {base64.b64encode(raw).decode()}\n"


def _parse_request(body: str) -> tuple[int, list[bytes], str]:
    head, sep, checkpoint = body.partition("\n\n")
    if not sep:
        raise ValueError("no blank line before the checkpoint")
    lines = head.split("\n")
    if not lines[0].startswith("old ") or not lines[0][4:].isdigit() or (lines[0][4:] != "0"
                                                                          and lines[0][4:].startswith("0")):
        raise ValueError("the first line must be 'old <size>'")
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise ValueError(f"more than {MAX_PROOF_LINES} proof lines")
    try:
        proof = [base64.b64decode(line, validate=True) for line in lines[1:]]
    except binascii.Error:
        raise ValueError("a proof line that is not base64") from None
    return int(lines[0][4:]), proof, checkpoint


def request_body(old: int, proof: list[bytes], checkpoint: str) -> str:
    return "".join([f"old {old}\n", *[base64.b64encode(h).decode() + "\n" for h in proof], "\n", checkpoint])


def serve(witness: Witness, host: str = "127.0.0.1", port: int = 0, ready=None) -> None:
    """Answer ``POST /add-checkpoint`` until interrupted; ``ready(url)`` once listening."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            if self.path.rstrip("/") != "/add-checkpoint":
                return self._answer(Answer(404, "POST /add-checkpoint\n"))
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = self.rfile.read(length).decode("utf-8")
            except UnicodeDecodeError:
                return self._answer(Answer(400, "the body is not UTF-8\n"))
            self._answer(witness.add_checkpoint(body))

        def _answer(self, answer: Answer):
            data = answer.body.encode()
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format, *args):  # one line per request, on stderr
            print(f"witness {witness.name}: {self.address_string()} {format % args}", flush=True)

    server = ThreadingHTTPServer((host, port), Handler)
    if ready:
        ready(f"http://{host}:{server.server_address[1]}")
    try:
        server.serve_forever()
    finally:
        server.server_close()
