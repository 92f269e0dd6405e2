"""csai.v1: SessionStore and Chat. The *_pb2*.py files here are generated; do not edit."""
