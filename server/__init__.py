"""recbandit's gRPC transport: settings, converters, servicers, error map and life cycle."""
