"""Generated bindings of the trainsvc wire API (see `trainsvc_api.v1`)."""

from trainsvc_api import v1

__all__ = ["v1"]
