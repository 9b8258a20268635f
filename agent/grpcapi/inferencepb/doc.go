// Package inferencepb is the generated Go code of the KServe v2 / Open
// Inference Protocol gRPC service (package "inference" on the wire), from
// grpc_predict_v2.proto beside it: the agent's gRPC server (agent/grpcapi)
// serves it and clients and tests call it. `make proto` regenerates it and
// `make proto-check` says whether the committed code is current.
package inferencepb
