"""The function whose cold start ``benchmarks/images.py`` times: it runs in an image with numpy and
pandas and imports both, as an inference or ETL function would. Containers import it by name."""

import vivace

PACKAGES = ("numpy==2.*", "pandas==2.*")

base = vivace.Image.debian_slim("3.11")
image = base.pip_install(*PACKAGES)
app = vivace.App("bench-images", image=image)

with image.imports():
    import numpy  # noqa: F401
    import pandas  # noqa: F401


@app.function(scaledown_window=2)
def heavy(x: int) -> int:
    return x
