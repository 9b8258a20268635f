// Command outpost-fleet is the Outpost fleet controller and its offline tools.
//
//	outpost-fleet keys init --dir KEYS
//	outpost-fleet keys rotate --dir KEYS --role targets|root
//	outpost-fleet models export --keys KEYS --name N --version V [--expires DURATION] --out DIR MODEL.tflite
//	outpost-fleet serve [--config fleet.yaml] [--broker URL] [--listen-mqtt ADDR] [--admin ADDR] [--data-dir DIR] [--store postgres://...] [--keys KEYS] [--fleet NAME] [--open-broker] [--admin-cert FILE --admin-key FILE]
//	outpost-fleet backup --out FILE [--config fleet.yaml] [--data-dir DIR]
//	outpost-fleet samples export --model M [--version V] [--since T] --out DIR [--config fleet.yaml] [--data-dir DIR]
//	outpost-fleet models push --keys KEYS --name N --version V MODEL.tflite
//	outpost-fleet models list
//	outpost-fleet models stats NAME [--version V] [--device ID] [--since T] [--until T] [--step D] [-o json]
//	outpost-fleet devices list
//	outpost-fleet devices enroll NAME [--labels k=v,...] [--bundle FILE [--broker URL]] [--out PASSWORD_FILE] [--replace]
//	outpost-fleet devices revoke NAME
//	outpost-fleet devices health ID [--since 24h] [-o json]
//	outpost-fleet devices audit ID [--limit N] [--before SEQ] [-o json]
//	outpost-fleet broker acl [--fleet NAME] [--out FILE]
//	outpost-fleet rollout create --model N --version V [--selector k=v,...] [--waves 10,50,100] [--max-failure-ratio 0.1] [--bake 5m]
//	outpost-fleet rollout status [--watch] [ID]
//	outpost-fleet rollout pause|resume|abort ID
//	outpost-fleet tokens create --role viewer|operator|admin [--name N]
//	outpost-fleet tokens list
//	outpost-fleet tokens revoke ID
//	outpost-fleet audit [--since T] [--limit N] [-o json]
//	outpost-fleet alerts [--state S] [--webhook W] [--limit N] [-o json]
//
// The client commands (models push/list/stats, devices, rollout, tokens, audit)
// talk to the admin API of a running serve (--admin, default
// http://127.0.0.1:8490) with the token of --token, else $OUTPOST_TOKEN,
// else --token-file; --ca (or $OUTPOST_CA) trusts a private CA for https.
package main

import (
	"flag"
	"io"

	"github.com/outpost-edge/outpost/internal/buildinfo"
	"github.com/outpost-edge/outpost/internal/subcommand"
)

var program = subcommand.Program{
	Name:    "outpost-fleet",
	Version: buildinfo.Version,
	Commands: []subcommand.Command{
		keysInitCommand,
		keysRotateCommand,
		modelsExportCommand,
		serveCommand,
		backupCommand,
		samplesExportCommand,
		modelsPushCommand,
		modelsListCommand,
		modelsStatsCommand,
		driftCommand,
		devicesListCommand,
		devicesEnrollCommand,
		devicesRevokeCommand,
		devicesHealthCommand,
		devicesAuditCommand,
		brokerACLCommand,
		rolloutCreateCommand,
		rolloutStatusCommand,
		rolloutPauseCommand,
		rolloutResumeCommand,
		rolloutAbortCommand,
		tokensCreateCommand,
		tokensListCommand,
		tokensRevokeCommand,
		auditCommand,
		alertsCommand,
	},
}

func main() { program.Main() }

// newFlagSet returns the flag set of the named command.
func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	return subcommand.NewFlagSet("outpost-fleet "+name, stderr)
}
