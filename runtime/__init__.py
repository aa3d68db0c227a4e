"""The daemon runtime shared by scheduler, executor and kvstore: listeners, TLS and a bearer
token, health and reflection, the shutdown order, one status error and its interceptor, one
size parser, one log format, the typed KVStore client. Imports only protos and gRPC."""
