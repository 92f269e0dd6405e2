"""Generated protobuf and gRPC code of the csai proto packages (see scripts/clients.sh)."""
