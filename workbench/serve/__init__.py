"""An OpenAI-compatible HTTP server on the continuous-batching engine (`workbench serve`).

    from workbench.serve.options import ServerConfig
    from workbench.serve.server import serve
    serve(ServerConfig(model_name="smollm2-135m"), load=lambda: load_model("smollm2-135m"))

Modules: options (flags, ServerConfig), protocol (request bodies and their checks), errors (OpenAI's
error JSON), state (the loaded engine, admission), generation (one request's outputs, aborts),
responses (response and chunk JSON), respond (one JSON body or server-sent events, disconnects),
metrics (Prometheus), app (routes), server (uvicorn), process (the server as a child process, for
notebooks, benchmarks and tests), static/index.html (the chat page). Importing this package imports
none of them (the CLI reads `options` on every call).
"""
