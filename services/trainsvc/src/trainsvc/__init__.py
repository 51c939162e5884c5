"""trainsvc: a long-running gRPC service that runs training jobs in worker processes.

Start it with ``trainsvc serve`` (see ``--help``), or embed it::

    from trainsvc import ServerOptions, serve
    serve(ServerOptions(listen="127.0.0.1:50051", data_dir=Path(".trainsvc")))

Trainer kinds are adapters in `trainsvc.kinds`.
"""

from trainsvc._cli import main
from trainsvc._server import ConfigurationError, ServerOptions, TrainsvcServer, serve

__all__ = ["ConfigurationError", "ServerOptions", "TrainsvcServer", "main", "serve"]
