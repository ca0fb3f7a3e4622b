"""The HTTP middleware: one concern each, pure ASGI (Starlette's style). `stack.py` puts them
in their order around the app; each module says what its layer does and why it is there."""
