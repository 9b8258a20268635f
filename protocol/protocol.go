// Package protocol is the Outpost wire protocol shared by the device agent and
// the fleet controller: the protocol version, the MQTT topic names, and the
// telemetry records and batches the agent publishes on its events topic.
//
// Both sides import this package; it imports neither of them. The format is
// described for people in docs/PROTOCOL.md, which must change together with
// this package.
package protocol

// Version is the protocol version. It is the "v1" segment of every topic and
// the version byte of every telemetry batch. A receiver rejects a batch whose
// version it does not know rather than guessing.
const Version = 1
