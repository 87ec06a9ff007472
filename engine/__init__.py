"""recbandit's domain: features, the bandit, reward joining and the event log.

Nothing here imports grpc, protobuf or mlflow; the server and the training jobs depend on this
package, never the other way round.
"""
