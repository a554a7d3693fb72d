"""Web endpoints of every kind, for tests/integration/test_web_endpoints.py."""

import asyncio
import os
import subprocess
import sys

import vivace

app = vivace.App(os.environ.get("VIVACE_TEST_WEB_APP", "webtest"))


@app.function()
@vivace.fastapi_endpoint()
def hello(name: str = "world"):
    return {"hello": name, "container": vivace.current_input_id() is not None}


@app.function(timeout=3)
@vivace.fastapi_endpoint(method="POST", label="typed")
def add(item: dict):
    import time

    if item.get("sleep"):
        time.sleep(float(item["sleep"]))
    return {"sum": sum(item["values"]), "size": len(item.get("blob", ""))}


@app.function()
@vivace.fastapi_endpoint(requires_proxy_auth=True)
def private():
    return "secret stuff"


@app.function(max_containers=1)
@vivace.concurrent(max_inputs=20)
@vivace.asgi_app()
def streaming():
    from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
    from fastapi.responses import PlainTextResponse, StreamingResponse

    web = FastAPI()

    @web.get("/events")
    async def events(n: int = 3, delay: float = 0.2):
        async def gen():
            for i in range(n):
                yield f"data: {i}\n\n"
                await asyncio.sleep(delay)

        return StreamingResponse(gen(), media_type="text/event-stream")

    @web.get("/gate")
    async def gate(queue: str):
        """Sends a line, waits until the test releases it (an item on the queue), sends another."""
        q = vivace.Queue.from_name(queue, create_if_missing=True)

        async def gen():
            yield "before\n"
            await q.get.aio(timeout=60)
            yield "after\n"

        return StreamingResponse(gen(), media_type="text/plain")

    @web.post("/echo")
    async def echo(request: Request):
        body = await request.body()
        import hashlib

        return {"sha256": hashlib.sha256(body).hexdigest(), "size": len(body)}

    @web.get("/big")
    def big(mib: int = 3):
        return PlainTextResponse("x" * (mib << 20))

    @web.get("/cookies")
    def cookies():
        from fastapi.responses import Response

        response = Response("two cookies")
        response.set_cookie("a", "1")
        response.set_cookie("b", "2")
        return response

    @web.get("/boom")
    def boom():
        raise RuntimeError("the app failed")

    @web.websocket("/ws")
    async def ws(socket: WebSocket):
        await socket.accept(
            subprotocol=socket.scope["subprotocols"][0] if socket.scope["subprotocols"] else None
        )
        try:
            while True:
                msg = await socket.receive()
                if msg["type"] == "websocket.disconnect":
                    return
                if msg.get("bytes") is not None:
                    await socket.send_bytes(msg["bytes"][::-1])
                elif msg["text"] == "bye":
                    await socket.close(code=4000, reason="asked to")
                    return
                else:
                    await socket.send_text(f"echo {msg['text']}")
        except WebSocketDisconnect:
            return

    @web.get("/sleep")
    async def sleep(seconds: float, queue: str):
        q = vivace.Queue.from_name(queue, create_if_missing=True)
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            await q.put.aio("cancelled")  # the client went away: the gateway cancelled this input
            raise
        return "slept"

    @web.get("/where")
    def where(request: Request):
        return {
            "path": request.url.path,
            "root_path": request.scope.get("root_path"),
            "query": str(request.url.query),
            "host": request.headers.get("host"),
            "cookies": request.cookies,
        }

    return web


@app.function()
@vivace.wsgi_app()
def classic():
    def wsgi(environ, start_response):
        body = f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']}?{environ['QUERY_STRING']}".encode()
        start_response("201 Created", [("Content-Type", "text/plain"), ("X-Kind", "wsgi")])
        return [body]

    return wsgi


@app.function()
@vivace.web_server(8765, startup_timeout=20)
def files():
    import tempfile

    root = tempfile.mkdtemp(dir=os.environ["HOME"])  # the container's own directory, removed with it
    with open(os.path.join(root, "hello.txt"), "w") as f:
        f.write("served by http.server\n")
    argv = [sys.executable, "-m", "http.server", "8765", "--bind", "127.0.0.1", "--directory", root]
    subprocess.Popen(argv)


@app.cls()
class Model:
    @vivace.enter()
    def load(self):
        self.weights = 42

    @vivace.fastapi_endpoint()
    def predict(self, x: int = 1):
        return {"y": x * self.weights}

    @vivace.method()
    def plain(self):
        return self.weights
