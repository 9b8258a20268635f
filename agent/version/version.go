// Package version holds the agent's build version, set at link time with
// -ldflags "-X github.com/outpost-edge/outpost/agent/version.Version=...".
package version

// Version is the release this binary was built from; "dev" for local builds.
var Version = "dev"
