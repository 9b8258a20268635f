package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/outpost-edge/outpost/fleet/admin"
	"github.com/outpost-edge/outpost/fleet/broker"
	"github.com/outpost-edge/outpost/internal/atomicfile"
	"github.com/outpost-edge/outpost/internal/subcommand"
)

var (
	devicesEnrollCommand = subcommand.Command{Name: "devices enroll",
		Summary: "mint a device's broker credential (its MQTT password, shown once)", Run: runDevicesEnroll}
	devicesRevokeCommand = subcommand.Command{Name: "devices revoke",
		Summary: "revoke a device's broker credential and cut its connection", Run: runDevicesRevoke}
	brokerACLCommand = subcommand.Command{Name: "broker acl",
		Summary: "write a Mosquitto acl_file confining each device to its own topics", Run: runBrokerACL}
)

func runDevicesEnroll(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("devices enroll", stderr)
	api := adminFlag(fs)
	out := fs.String("out", "", "write the password to this file (mode 0600), the agent's fleet.password_file; default: print it")
	replace := fs.Bool("replace", false, "replace the device's credential if it has one (the old one stops working)")
	pos, err := subcommand.ParseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return subcommand.UsageError("one device name is required")
	}
	var cred admin.Credential
	if err := api.client().json(ctx, http.MethodPost, "/v1/devices/"+pos[0]+"/credential", admin.EnrollRequest{Replace: *replace}, &cred); err != nil {
		return err
	}
	if *out == "" {
		fmt.Fprintf(stdout, "device %s enrolled: fleet.username %s, password (shown once):\n%s\n", cred.Device, cred.Username, cred.Password)
		return nil
	}
	if err := atomicfile.WriteFile(*out, []byte(cred.Password+"\n"), atomicfile.Options{Perm: 0o600}); err != nil {
		return fmt.Errorf("devices enroll: %w", err)
	}
	fmt.Fprintf(stdout, "device %s enrolled: fleet.username %s, fleet.password_file %s\n", cred.Device, cred.Username, *out)
	return nil
}

func runDevicesRevoke(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("devices revoke", stderr)
	api := adminFlag(fs)
	pos, err := subcommand.ParseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return subcommand.UsageError("one device name is required")
	}
	var res admin.RevokeResult
	if err := api.client().json(ctx, http.MethodDelete, "/v1/devices/"+pos[0]+"/credential", nil, &res); err != nil {
		var ae *apiError
		if errors.As(err, &ae) && ae.status == http.StatusNotFound {
			return fmt.Errorf("device %s holds no credential", pos[0])
		}
		return err
	}
	fmt.Fprintf(stdout, "device %s revoked (disconnected: %v)\n", res.Device, res.Disconnected)
	return nil
}

func runBrokerACL(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("broker acl", stderr)
	fleetName := fs.String("fleet", "default", "fleet name")
	out := fs.String("out", "", "file to write (default: standard output)")
	if _, err := subcommand.ParseInterspersed(fs, args); err != nil {
		return err
	}
	if *out == "" {
		return broker.MosquittoACL(stdout, *fleetName)
	}
	return atomicfile.Write(*out, atomicfile.Options{Perm: 0o644}, func(w io.Writer) error {
		return broker.MosquittoACL(w, *fleetName)
	})
}
