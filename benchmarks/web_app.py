"""The web benchmark's endpoints: a trivial FastAPI endpoint through Vivace's gateway, and the same
route as a plain FastAPI app for uvicorn (``plain``). Imports only the standard library and vivace at
module level; FastAPI is imported where the app is built."""

import vivace

app = vivace.App("bench-web")


def hello(name: str = "bench"):
    return {"hello": name}


@app.function(max_containers=4)
@vivace.fastapi_endpoint()
def endpoint(name: str = "bench"):
    return hello(name)


def plain():
    from fastapi import FastAPI

    web = FastAPI()
    web.add_api_route("/", hello, methods=["GET"])
    return web
