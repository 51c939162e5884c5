"""trainsvc.v1: messages (`trainsvc_pb2`) and gRPC stubs (`trainsvc_pb2_grpc`)."""

from trainsvc_api.v1 import trainsvc_pb2, trainsvc_pb2_grpc

__all__ = ["trainsvc_pb2", "trainsvc_pb2_grpc"]
