"""A real backend for Hubbub's proxies, started by tests/proxy.rs.

Listens on 127.0.0.1 (a free port, printed as the first line of stdout) and answers every
proxy call as Centrifugo's proxy protocol says, by path:

  /connect      by the connect data's "mode": ok (default; user from "user"), short (expires
                in 1 s), error, disconnect, slow, garbage, huge
  /refresh      first call per client: expire_at in 1 s; the next: expired; user "kicker"
                (with the connection's meta): disconnect
  /subscribe    by the channel name: "...deny" error, "...kick" disconnect, "...short"
                expire_at in 1 s, "...plain" overrides presence and force_recovery
                (off), otherwise info + data
  /sub_refresh  expired ("...past...": an expire_at already past)
  /publish      by the channel name: "...deny" error, "...skip" skip_history, otherwise the
                data with "text" in upper case
  /rpc          by the method: "deny" error, "kick" disconnect, otherwise the request itself
                and its headers as data (the tests check what the server sent)
  /slow         answers after 3 s; /garbage not JSON; /huge 2 MB; /status500 a 500
Binary-encoding proxies get and give b64data.
"""

import base64
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

refreshes = {}
lock = threading.Lock()


def answer_for(path, req, headers):
    if path == "/connect":
        data = req.get("data") or {}
        mode = data.get("mode", "ok")
        if mode == "error":
            return {"error": {"code": 4001, "message": "who are you"}}
        if mode == "disconnect":
            return {"disconnect": {"code": 4501, "reason": "banned"}}
        if mode == "slow":
            time.sleep(3)
        if mode == "garbage":
            return "garbage"
        if mode == "huge":
            return {"result": {"user": "x", "data": {"pad": "x" * 2_000_000}}}
        result = {
            "user": data.get("user", "alice"),
            "info": {"name": "Alice"},
            "data": {"welcome": True, "name": req.get("name"), "cookie": headers.get("Cookie")},
            "meta": {"tenant": 7},
            "channels": ["news"],
            "subs": {
                "feed": {
                    "b64info": base64.b64encode(b'{"feed":true}').decode(),
                    "data": {"first": 1},
                    "override": {"presence": {"value": False}},
                    "expire_at": 0,
                }
            },
        }
        if mode == "short":
            result["expire_at"] = int(time.time()) + 1
        return {"result": result}
    if path == "/refresh":
        if req.get("user") == "kicker" and req.get("meta") == {"tenant": 7}:
            return {"disconnect": {"code": 4504, "reason": "refresh kick"}}
        with lock:
            n = refreshes.get(req["client"], 0) + 1
            refreshes[req["client"]] = n
        if n == 1:
            return {"result": {"expire_at": int(time.time()) + 1}}
        return {"result": {"expired": True}}
    if path == "/subscribe":
        channel = req["channel"]
        if channel.endswith("deny"):
            return {"error": {"code": 403, "message": "not yours"}}
        if channel.endswith("kick"):
            return {"disconnect": {"code": 4502, "reason": "kicked"}}
        result = {"info": {"role": "reader"}, "data": {"motd": "hello " + req.get("user", "")}}
        if channel.endswith("short"):
            result["expire_at"] = int(time.time()) + 1
        if channel.endswith("plain"):
            result["override"] = {"presence": {"value": False}, "force_recovery": {"value": False}}
        return {"result": result}
    if path == "/sub_refresh":
        if "past" in req["channel"]:
            return {"result": {"expire_at": int(time.time()) - 10}}
        return {"result": {"expired": True}}
    if path == "/publish":
        channel = req["channel"]
        if channel.endswith("deny"):
            return {"error": {"code": 403, "message": "read only"}}
        if channel.endswith("skip"):
            return {"result": {"skip_history": True}}
        data = req.get("data") or {}
        return {"result": {"data": {"text": str(data.get("text", "")).upper()}}}
    if path == "/rpc":
        if req["method"] == "deny":
            return {"error": {"code": 4003, "message": "no such thing", "temporary": True}}
        if req["method"] == "kick":
            return {"disconnect": {"code": 4503, "reason": "rpc kick"}}
        echo = {"request": req, "headers": {k.lower(): v for k, v in headers.items()}}
        if "b64data" in req:
            return {"result": {"b64data": base64.b64encode(json.dumps(echo).encode()).decode()}}
        return {"result": {"data": echo}}
    if path == "/slow":
        time.sleep(3)
        return {"result": {}}
    if path == "/garbage":
        return "garbage"
    if path == "/huge":
        return {"result": {"data": {"pad": "x" * 2_000_000}}}
    if path == "/status500":
        return 500
    return 404


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        req = json.loads(self.rfile.read(length) or b"{}")
        answer = answer_for(self.path, req, self.headers)
        status = 200
        if isinstance(answer, int):
            status, body = answer, b"{}"
        elif answer == "garbage":
            body = b"<html>this is not the proxy's JSON</html>"
        else:
            body = json.dumps(answer).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(server.server_address[1], flush=True)
server.serve_forever()
