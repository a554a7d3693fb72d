"""A class whose @exit hook says when it ran (read back from the app's logs)."""

import vivace

app = vivace.App("lifecycle")


@app.cls(scaledown_window=60)
class Service:
    tag: str = vivace.parameter()

    @vivace.enter()
    def start(self):
        print(f"enter {self.tag}", flush=True)

    @vivace.method()
    def ping(self):
        return f"pong {self.tag}"

    @vivace.exit()
    def stop(self):
        print(f"exit {self.tag}", flush=True)
