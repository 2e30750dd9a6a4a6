"""``provision api``: the HTTP front door (``app``), its live stream (``stream``), its callers'
tokens (``auth``) and its page (``page.html``). Nothing is imported here, so the token
commands work without the ``api`` extra (FastAPI, uvicorn) installed."""
