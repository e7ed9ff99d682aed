"""Converted layers kept for reuse: the pipeline takes a layer from here instead of converting it
again (`local.py`: this process and a directory; `registry.py`: a registry repository shared between
machines). `ctr-remote batch` is what opens one; the pipeline only looks layers up and adds them."""
