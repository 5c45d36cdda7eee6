#!/usr/bin/env python3
"""A proxy in front of the lab's Distribution registry that behaves like Sonatype Nexus 3.

Build and release are meant to work against Nexus, which speaks the same Docker Registry v2 API as
Distribution but differs in ways that break tools tested only against Distribution (see
shared/NEXUS-FACTS.md). This proxy reproduces those differences, each switchable from the command
line (or the NEXUS_PROXY_* variable named in --help), so tests can pick them:

- Path-based repositories (Nexus 3.83 path routing): /v2/<repo>/<name>/... where <repo> is one of
  the configured hosted repositories (default `dev`: Allow redeploy, `release`: Disable redeploy).
  Each maps to the upstream name <prefix><repo>/<name>, so the repositories are separate upstream
  and blob mounts between them (`?mount=..&from=<repo>/<name>`) are rewritten too. Unknown repos
  answer 404. Location headers from upstream are rewritten back to this proxy's address and names.
- Docker Bearer Token Realm: 401 with `WWW-Authenticate: Bearer realm=".../v2/token",service=...`;
  GET /v2/token with the lab's Basic credentials gives a token. `--auth basic` mimics
  `forceBasicAuth` instead (Basic challenge, Basic accepted); in Bearer mode Basic is refused.
- Deployment policy per repository: `allow`, `disable` (Nexus's ALLOW_ONCE: a manifest PUT for a tag
  that exists answers 400 BLOB_UPLOAD_INVALID, even for the same digest) or `latest-only` (disable,
  but the literal tag `latest` may move). PUT by digest is always allowed.
- HEAD on a manifest answers 404 where GET works (`--head-manifest 404`, the default).
- /tags/list without a `Link` header, in pages of at most `--tags-page-max` tags whatever `n` the
  client asks for, honouring `last=`.
- For tests, without authentication: POST /_lab/fail-after-puts?n=N[&scope=all] makes every manifest
  PUT after the next N (or every request, with scope=all) answer 503 until POST /_lab/reset;
  GET /_lab/log lists the manifest PUTs seen (method, path, status); GET /_lab/stats counts the
  body bytes streamed each way and the chunked request bodies.

Bodies are streamed in both directions (blobs are hundreds of MB): request bodies with
Content-Length or `Transfer-Encoding: chunked` (as the docker engine sends blob uploads) are passed
on chunk by chunk, never held whole. The lab's credentials come from NEXUS_PROXY_USERNAME and
NEXUS_PROXY_PASSWORD only (never argv) and are never printed.
"""

import argparse
import base64
import contextlib
import hmac
import http.client
import json
import os
import re
import secrets
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, urlencode, urlsplit

CHUNK = 64 * 1024
# Request bodies of answers given without asking upstream (401, 400, 503) are read and dropped so
# the connection can be reused, up to this size; a larger one closes the connection instead.
DRAIN_LIMIT = 4 * 1024 * 1024
MANIFEST_ACCEPT = ", ".join([
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
])
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade"}
POLICIES = ("allow", "disable", "latest-only")
# /v2/<repo>/<name>/<kind>/<rest>: the name is everything up to the first manifests|blobs|tags segment.
API_PATH = re.compile(r"^/v2/(?P<repo>[^/]+)/(?P<name>.+?)/(?P<kind>manifests|blobs|tags)/(?P<rest>.*)$")


def error_body(code, message, detail=None):
    # Compact, as Nexus writes it.
    return json.dumps({"errors": [{"code": code, "message": message, "detail": detail}]}, separators=(",", ":")).encode()


class State:
    """What the control endpoints change and report, shared by all request threads."""

    def __init__(self):
        self.lock = threading.Lock()
        # Serialises the "does the tag exist?" check and the PUT in non-redeploy repositories, so two
        # concurrent pushes of one new tag cannot both pass the check.
        self.put_lock = threading.Lock()
        self.tokens = set()
        self.reset()

    def reset(self):
        with self.lock:
            self.puts_left = None  # manifest PUTs still allowed; None: no fault injected
            self.everything = False  # once failing, fail every request, not only manifest PUTs
            self.failing = False
            self.log = []
            self.bytes_in = 0
            self.bytes_out = 0
            self.chunked_requests = 0

    def arm(self, puts, everything):
        with self.lock:
            self.puts_left, self.everything = puts, everything
            self.failing = everything and puts == 0

    def count(self, inbound=0, outbound=0):
        with self.lock:
            self.bytes_in += inbound
            self.bytes_out += outbound

    def request_allowed(self):
        with self.lock:
            return not (self.everything and self.failing)

    def manifest_put_allowed(self):
        """Counts a manifest PUT against an injected fault: False once the allowance is used up."""
        with self.lock:
            if self.failing:
                return False
            if self.puts_left is None:
                return True
            if self.puts_left == 0:
                self.failing = True
                return False
            self.puts_left -= 1
            self.failing = self.everything and self.puts_left == 0
            return True


def length_reader(stream, length, state):
    """The `length` bytes of a request body, in pieces as they arrive."""
    while length > 0:
        data = stream.read(min(length, CHUNK))
        if not data:
            raise ConnectionError("the client closed the connection in the middle of a request body")
        length -= len(data)
        state.count(inbound=len(data))
        yield data


def chunked_reader(stream, state):
    """The chunks of a `Transfer-Encoding: chunked` body, decoded, as they arrive."""
    while True:
        line = stream.readline(1024)
        if not line:
            raise ConnectionError("the client closed the connection in the middle of a chunked body")
        size = int(line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while stream.readline(1024) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return
        yield from length_reader(stream, size, state)
        stream.readline(1024)  # the CRLF after each chunk


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as registry clients expect
    server_version = "Nexus/3.83.0 (lab)"
    config = None  # set in main()
    state = None

    # -- plumbing ------------------------------------------------------------------------------------

    def do_GET(self):
        self.body_consumed = False
        self.responded = False
        try:
            self.dispatch()
        except (OSError, http.client.HTTPException, ValueError) as error:
            self.log_message("%s %s failed: %r", self.command, self.path, error)
            # In the middle of an answer there is nothing sensible to add; before it, say what failed.
            self.close_connection = True
            if not self.responded:
                self.answer(502, error_body("UNAVAILABLE", "the lab registry behind the proxy failed"))

    do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = do_GET

    def send_response(self, code, message=None):
        self.responded = True
        super().send_response(code, message)

    def log_message(self, format, *args):
        # The request line only (never headers, which carry credentials), on stderr for `docker logs`;
        # escaped, since the docker engine first tries TLS here and its handshake is binary.
        message = format % args
        if not message.isprintable():
            message = ascii(message)[1:-1]
        sys.stderr.write("%s %s\n" % (self.log_date_time_string(), message))

    def answer(self, status, body=b"", headers=()):
        """An answer of our own (not upstream's)."""
        self.discard_body()
        self.send_response(status)
        self.send_header("Docker-Distribution-Api-Version", "registry/2.0")
        for name, value in headers:
            self.send_header(name, value)
        if body:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def discard_body(self):
        """Reads an unused request body so the next request on the connection parses; or closes."""
        if self.body_consumed:
            return
        self.body_consumed = True
        length = int(self.headers.get("Content-Length") or 0)
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower() or length > DRAIN_LIMIT:
            self.close_connection = True
        elif length:
            self.rfile.read(length)

    def request_body(self):
        """The request body as pieces to stream, and the headers that describe it upstream."""
        self.body_consumed = True
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            with self.state.lock:
                self.state.chunked_requests += 1
            return chunked_reader(self.rfile, self.state), {"Transfer-Encoding": "chunked"}
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            return length_reader(self.rfile, length, self.state), {"Content-Length": str(length)}
        return (), ({"Content-Length": "0"} if self.command in ("PUT", "POST", "PATCH") else {})

    def upstream(self, method, path, body=(), body_headers=None, client_headers=True):
        """Sends one request to the lab registry with the lab's Basic credentials; returns the
        connection (to close once the answer is read) and the answer."""
        body_headers = body_headers or {}
        # A list, not a dict: clients send some headers more than once (Go clients put each media
        # type of Accept on its own line), and dropping all but one makes Distribution fall back
        # to schema 1 manifests.
        headers = []
        if client_headers:
            skip = HOP_BY_HOP | {"host", "authorization", "content-length", "expect"} | set(map(str.lower, body_headers))
            headers = [(name, value) for name, value in self.headers.items() if name.lower() not in skip]
        headers += list(body_headers.items())
        pair = "%s:%s" % (self.config.username, self.config.password)
        headers.append(("Authorization", "Basic " + base64.b64encode(pair.encode()).decode()))
        connection = http.client.HTTPConnection(self.config.upstream, timeout=300)
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers:
            connection.putheader(name, value)
        connection.endheaders()
        chunked = body_headers.get("Transfer-Encoding") == "chunked"
        for piece in body:
            connection.send(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        if chunked:
            connection.send(b"0\r\n\r\n")
        return connection, connection.getresponse()

    def forward(self, method, path, body=(), body_headers=None, drop_header=None):
        """Sends the request upstream and passes the answer on, streaming both bodies."""
        connection, response = self.upstream(method, path, body, body_headers)
        try:
            self.relay(response, drop_header)
            return response.status
        finally:
            connection.close()

    def relay(self, response, drop_header=None):
        self.send_response(response.status)
        length = response.getheader("Content-Length")
        for name, value in response.getheaders():
            lower = name.lower()
            # Upstream's Basic challenge is not ours to show (it would only mean the lab's own
            # login failed); hop-by-hop headers, the length, Date and Server are this connection's.
            if lower in HOP_BY_HOP or lower in ("content-length", "www-authenticate", "date", "server"):
                continue
            if drop_header and drop_header(lower):
                continue
            if lower == "location":
                value = self.client_location(value)
            self.send_header(name, value)
        bodiless = self.command == "HEAD" or response.status in (204, 304)
        if length is not None:
            self.send_header("Content-Length", length)
        elif not bodiless:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if bodiless:
            return
        while True:
            data = response.read(CHUNK)
            if not data:
                break
            self.state.count(outbound=len(data))
            self.wfile.write(data if length is not None else b"%x\r\n%s\r\n" % (len(data), data))
        if length is None:
            self.wfile.write(b"0\r\n\r\n")

    # -- names ---------------------------------------------------------------------------------------

    def upstream_name(self, repo, name):
        return "%s%s/%s" % (self.config.upstream_prefix, repo, name)

    def client_location(self, location):
        # Distribution answers with absolute URLs built from the Host it was sent (127.0.0.1:5000)
        # and its own names; the client must come back here, with the names it knows.
        parts = urlsplit(location)
        path = parts.path
        prefix = "/v2/" + self.config.upstream_prefix
        if not path.startswith(prefix):
            return location
        host = self.headers.get("Host") or self.config.listen
        query = "?" + parts.query if parts.query else ""
        return "http://%s/v2/%s%s" % (host, path[len(prefix):], query)

    # -- authentication ------------------------------------------------------------------------------

    def basic_login_ok(self, header):
        if not header.lower().startswith("basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:].strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        user_ok = hmac.compare_digest(user.encode(), self.config.username.encode())
        return hmac.compare_digest(password.encode(), self.config.password.encode()) and user_ok

    def authenticated(self):
        header = self.headers.get("Authorization", "")
        if self.config.auth == "basic":
            return self.basic_login_ok(header)
        # Bearer mode: only tokens from our realm. Basic sent here means the client ignored the
        # challenge, which is what makes such a client fail against a Bearer-only Nexus.
        if header.lower().startswith("bearer "):
            with self.state.lock:
                return header[7:].strip() in self.state.tokens
        return False

    def challenge(self):
        if self.config.auth == "basic":
            value = 'Basic realm="Sonatype Nexus Repository Manager"'
        else:
            value = 'Bearer realm="%s",service="%s"' % (self.config.realm, self.config.service)
        body = error_body("UNAUTHORIZED", "access to the requested resource is not authorized")
        self.answer(401, body, [("WWW-Authenticate", value)])

    def token(self):
        # Nexus's token endpoint takes Basic credentials; service and scope are accepted and not
        # checked (the lab user may do everything).
        if self.config.auth != "bearer":
            return self.answer(404, error_body("NOT_FOUND", "the Docker Bearer Token Realm is not active"))
        if not self.basic_login_ok(self.headers.get("Authorization", "")):
            body = error_body("UNAUTHORIZED", "authentication required")
            return self.answer(401, body, [("WWW-Authenticate", 'Basic realm="Sonatype Nexus Repository Manager"')])
        token = "DockerToken." + secrets.token_hex(16)
        with self.state.lock:
            self.state.tokens.add(token)
        self.answer(200, json.dumps({"token": token, "access_token": token, "expires_in": 3600}).encode())

    # -- requests ------------------------------------------------------------------------------------

    def dispatch(self):
        path = urlsplit(self.path).path
        if path.startswith("/_lab/"):
            return self.control(path)
        if path == "/v2/token":
            return self.token()
        if not path.startswith("/v2/"):
            return self.answer(404, error_body("NOT_FOUND", "not a registry path"))
        if not self.authenticated():
            return self.challenge()
        is_manifest_put = self.command == "PUT" and "/manifests/" in path
        if not self.state.request_allowed() or (is_manifest_put and not self.state.manifest_put_allowed()):
            if is_manifest_put:
                self.record(503)
            return self.answer(503, error_body("UNAVAILABLE", "service unavailable (fault injected by the lab)"))
        if path == "/v2/":
            return self.forward(self.command, "/v2/")
        match = API_PATH.match(path)
        if not match or match["repo"] not in self.config.repos:
            detail = "no hosted repository named %r here" % path.split("/")[2]
            return self.answer(404, error_body("NAME_UNKNOWN", "repository name not known to registry", detail))
        repo, name, kind, rest = match["repo"], match["name"], match["kind"], match["rest"]
        upstream_path = "/v2/%s/%s/%s" % (self.upstream_name(repo, name), kind, rest)
        query = urlsplit(self.path).query
        if kind == "tags":
            return self.tags(name, upstream_path)
        if kind == "manifests" and self.command == "HEAD" and self.config.head_manifest == "404":
            # Nexus has answered 404 to HEAD where GET of the same manifest works.
            return self.answer(404)
        if kind == "manifests" and self.command == "PUT":
            return self.put_manifest(repo, rest, upstream_path)
        if kind == "blobs" and self.command == "POST":
            query = self.mount_query(query)
        self.forward(self.command, upstream_path + ("?" + query if query else ""), *self.request_body())

    def record(self, status):
        with self.state.lock:
            self.state.log.append({"method": self.command, "path": self.path, "status": status})

    def mount_query(self, query):
        # A cross-repository mount names its source as the client sees it (dev/intric/backend);
        # upstream knows it under its own name. A source outside the hosted repositories cannot be
        # mounted: without mount/from, upstream starts a plain upload (202), as after a failed mount.
        params = parse_qs(query, keep_blank_values=True)
        if "mount" in params:
            repo, _, name = params.get("from", [""])[0].partition("/")
            if repo in self.config.repos and name:
                params["from"] = [self.upstream_name(repo, name)]
            else:
                params.pop("mount")
                params.pop("from", None)
        return urlencode(params, doseq=True, quote_via=quote, safe=":/")

    def put_manifest(self, repo, reference, upstream_path):
        policy = self.config.repos[repo]
        guarded = policy == "disable" or (policy == "latest-only" and reference != "latest")
        if reference.startswith("sha256:"):
            guarded = False  # a PUT by digest creates no tag to protect
        with self.state.put_lock if guarded else contextlib.nullcontext():
            if guarded and self.upstream_has(upstream_path):
                # Disable redeploy: an existing tag is never written again, even with the same
                # digest (Nexus refuses that too), and Nexus words it as a failed blob upload.
                self.record(400)
                detail = "Repository does not allow updating assets: %s" % repo
                return self.answer(400, error_body("BLOB_UPLOAD_INVALID", "blob upload invalid", detail))
            status = self.forward("PUT", upstream_path, *self.request_body())
            self.record(status)

    def upstream_has(self, manifest_path):
        # Upstream answers HEAD properly, so the check sees what is really stored.
        connection, response = self.upstream("HEAD", manifest_path, body_headers={"Accept": MANIFEST_ACCEPT},
                                             client_headers=False)
        try:
            response.read()
            return response.status == 200
        finally:
            connection.close()

    def tags(self, name, upstream_path):
        # Nexus sends no Link header (or a wrong one) and small pages: a client must page with n and
        # last itself. Upstream is asked for the whole list, and it is paged here.
        if self.command != "GET":
            return self.answer(405, error_body("UNSUPPORTED", "the operation is unsupported"))
        self.discard_body()
        connection, response = self.upstream("GET", upstream_path.split("?")[0])
        try:
            if response.status != 200:
                return self.relay(response, drop_header=lambda name: name == "link")
            tags = sorted(json.loads(response.read() or b"{}").get("tags") or [])
        finally:
            connection.close()
        params = parse_qs(urlsplit(self.path).query)
        last = params.get("last", [None])[0]
        try:
            limit = int(params["n"][0]) if "n" in params else None
        except ValueError:
            return self.answer(400, error_body("PAGINATION_NUMBER_INVALID", "invalid number of results requested"))
        cap = self.config.tags_page_max
        if cap > 0:
            limit = cap if limit is None else min(limit, cap)
        if last is not None:
            tags = [tag for tag in tags if tag > last]
        page = tags if limit is None else tags[:max(limit, 0)]
        self.answer(200, json.dumps({"name": name, "tags": page}).encode())

    def control(self, path):
        params = parse_qs(urlsplit(self.path).query)
        if path == "/_lab/fail-after-puts" and self.command == "POST":
            try:
                puts = max(int(params.get("n", ["0"])[0]), 0)
            except ValueError:
                return self.answer(400, error_body("BAD_REQUEST", "n must be a number"))
            self.state.arm(puts, params.get("scope", ["puts"])[0] == "all")
            return self.answer(204)
        if path == "/_lab/reset" and self.command == "POST":
            self.state.reset()
            return self.answer(204)
        if path == "/_lab/log" and self.command == "GET":
            with self.state.lock:
                body = json.dumps(self.state.log)
            return self.answer(200, body.encode())
        if path == "/_lab/stats" and self.command == "GET":
            with self.state.lock:
                body = json.dumps({"request_body_bytes": self.state.bytes_in,
                                   "response_body_bytes": self.state.bytes_out,
                                   "chunked_requests": self.state.chunked_requests})
            return self.answer(200, body.encode())
        self.answer(404, error_body("NOT_FOUND", "unknown control endpoint"))


def parse_args(argv):
    env = os.environ.get
    parser = argparse.ArgumentParser(description="A Nexus 3 look-alike in front of the lab registry.")
    parser.add_argument("--listen", default=env("NEXUS_PROXY_LISTEN", "127.0.0.1:5001"),
                        help="host:port to listen on (NEXUS_PROXY_LISTEN)")
    parser.add_argument("--upstream", default=env("NEXUS_PROXY_UPSTREAM", "127.0.0.1:5000"),
                        help="host:port of the lab registry, plain HTTP (NEXUS_PROXY_UPSTREAM)")
    parser.add_argument("--upstream-prefix", default=env("NEXUS_PROXY_UPSTREAM_PREFIX", ""),
                        help="put before upstream names, e.g. `test-1/` (NEXUS_PROXY_UPSTREAM_PREFIX)")
    parser.add_argument("--repo", action="append", metavar="NAME=POLICY",
                        help="a hosted repository and its policy: allow, disable or latest-only; repeatable "
                             "(NEXUS_PROXY_REPOS, comma-separated; default dev=allow,release=disable)")
    parser.add_argument("--auth", choices=("bearer", "basic"), default=env("NEXUS_PROXY_AUTH", "bearer"),
                        help="bearer: the Docker Bearer Token Realm; basic: forceBasicAuth (NEXUS_PROXY_AUTH)")
    parser.add_argument("--realm", default=env("NEXUS_PROXY_REALM"),
                        help="the token realm URL in challenges (NEXUS_PROXY_REALM; default http://LISTEN/v2/token)")
    parser.add_argument("--service", default=env("NEXUS_PROXY_SERVICE", "nexus-lab"),
                        help="the service named in Bearer challenges (NEXUS_PROXY_SERVICE)")
    parser.add_argument("--head-manifest", choices=("404", "pass"), default=env("NEXUS_PROXY_HEAD_MANIFEST", "404"),
                        help="404: HEAD on manifests answers 404; pass: as upstream (NEXUS_PROXY_HEAD_MANIFEST)")
    parser.add_argument("--tags-page-max", type=int, default=int(env("NEXUS_PROXY_TAGS_PAGE_MAX", "2")),
                        help="most tags per tags/list page, 0 for no cap (NEXUS_PROXY_TAGS_PAGE_MAX)")
    args = parser.parse_args(argv)
    specs = args.repo or env("NEXUS_PROXY_REPOS", "dev=allow,release=disable").split(",")
    args.repos = {}
    for spec in specs:
        name, _, policy = spec.strip().partition("=")
        if not name or policy not in POLICIES:
            parser.error("--repo %r: expected NAME=POLICY with POLICY one of %s" % (spec, ", ".join(POLICIES)))
        args.repos[name] = policy
    args.realm = args.realm or "http://%s/v2/token" % args.listen
    args.username = env("NEXUS_PROXY_USERNAME", "")
    args.password = env("NEXUS_PROXY_PASSWORD", "")
    if not args.username or not args.password:
        parser.error("NEXUS_PROXY_USERNAME and NEXUS_PROXY_PASSWORD must be set (the lab registry's login)")
    return args


def main(argv):
    config = parse_args(argv)
    Handler.config, Handler.state = config, State()
    host, _, port = config.listen.rpartition(":")
    server = ThreadingHTTPServer((host, int(port)), Handler)
    server.daemon_threads = True
    policies = ", ".join("%s (%s)" % item for item in config.repos.items())
    print("nexus-lab proxy on %s -> %s: %s; auth %s; HEAD manifests %s; tag pages of %s"
          % (config.listen, config.upstream, policies, config.auth, config.head_manifest, config.tags_page_max),
          file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
