package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/outpost-edge/outpost/fleet/admin"
	"github.com/outpost-edge/outpost/fleet/broker"
	"github.com/outpost-edge/outpost/fleet/rollout"
	"github.com/outpost-edge/outpost/internal/atomicfile"
	"github.com/outpost-edge/outpost/internal/enrolment"
	"github.com/outpost-edge/outpost/internal/subcommand"
)

var (
	devicesEnrollCommand = subcommand.Command{Name: "devices enroll",
		Summary: "mint a device's broker credential and write its bootstrap bundle (--bundle)", Run: runDevicesEnroll}
	devicesRevokeCommand = subcommand.Command{Name: "devices revoke",
		Summary: "revoke a device's broker credential and cut its connection", Run: runDevicesRevoke}
	brokerACLCommand = subcommand.Command{Name: "broker acl",
		Summary: "write a Mosquitto acl_file confining each device to its own topics", Run: runBrokerACL}
)

func runDevicesEnroll(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("devices enroll", stderr)
	api := adminFlag(fs)
	bundleOut := fs.String("bundle", "", "write the device's bootstrap bundle to this file (mode 0600; it holds the password): outpost-agent enroll installs it")
	labels := fs.String("labels", "", "the device's labels in the bundle, k=v,k2=v2 (rollout selectors match them)")
	brokerURL := fs.String("broker", "", "broker URL the device dials, or the nodes of a clustered broker separated by commas, written into the bundle (default: the controller's own brokers)")
	cleanSession := fs.Bool("clean-session", false, "the bundle sets fleet.clean_session: the device connects on a clean session with QoS 0 subscriptions (devices on a NATS cluster, docs/SCALE.md)")
	out := fs.String("out", "", "write only the password to this file (mode 0600), the agent's fleet.password_file; default: print it")
	replace := fs.Bool("replace", false, "replace the device's credential if it has one (the old one stops working)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: outpost-fleet devices enroll NAME [--labels k=v,...] [--bundle FILE [--broker URL[,URL...]] [--clean-session]] [--out PASSWORD_FILE] [--replace]")
		fs.PrintDefaults()
	}
	pos, err := subcommand.ParseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return subcommand.UsageError("one device name is required")
	}
	lbls, err := rollout.ParseSelector(*labels)
	if err != nil {
		return subcommand.UsageError("--labels: " + err.Error())
	}
	if (*labels != "" || *brokerURL != "" || *cleanSession) && *bundleOut == "" {
		return subcommand.UsageError("--labels, --broker and --clean-session go into the bundle: give --bundle FILE")
	}
	var brokers []string
	if *brokerURL != "" {
		for _, b := range strings.Split(*brokerURL, ",") {
			b = strings.TrimSpace(b)
			if u, err := url.Parse(b); err != nil || (u.Scheme != "tcp" && u.Scheme != "ssl") || u.Host == "" {
				return subcommand.UsageError(fmt.Sprintf("--broker %q: want tcp://host:port or ssl://host:port", b))
			}
			if slices.Contains(brokers, b) {
				return subcommand.UsageError(fmt.Sprintf("--broker: %s is named twice", b))
			}
			brokers = append(brokers, b)
		}
	}
	var cred admin.Credential
	if err := api.client().json(ctx, http.MethodPost, "/v1/devices/"+pos[0]+"/credential", admin.EnrollRequest{Replace: *replace}, &cred); err != nil {
		return err
	}
	if *bundleOut != "" {
		// The credential exists now: a bundle that cannot be written is
		// reported with the way out (enroll again with --replace).
		if err := writeBundle(*bundleOut, cred, enrolment.Fleet{Labels: lbls, CleanSession: *cleanSession}, brokers, stderr); err != nil {
			return fmt.Errorf("devices enroll: %s holds a new credential but %w; run again with --replace", cred.Device, err)
		}
		fmt.Fprintf(stdout, "device %s enrolled in fleet %s: bundle %s (mode 0600) holds its broker password; copy it to the device, run outpost-agent enroll %s --data-dir DIR there, then delete it\n",
			cred.Device, cred.Fleet, *bundleOut, filepath.Base(*bundleOut))
	}
	if *out != "" {
		if err := atomicfile.WriteFile(*out, []byte(cred.Password+"\n"), atomicfile.Options{Perm: 0o600}); err != nil {
			return fmt.Errorf("devices enroll: %w", err)
		}
		fmt.Fprintf(stdout, "device %s enrolled: fleet.username %s, fleet.password_file %s\n", cred.Device, cred.Username, *out)
	}
	if *bundleOut == "" && *out == "" {
		fmt.Fprintf(stdout, "device %s enrolled: fleet.username %s, password (shown once):\n%s\n", cred.Device, cred.Username, cred.Password)
	}
	return nil
}

// writeBundle writes the enrolment bundle of cred (mode 0600), its fleet
// section f (the labels and the session choice) completed from cred. The
// brokers are the ones given, else the controller's; one only this machine
// can reach draws a warning.
func writeBundle(path string, cred admin.Credential, f enrolment.Fleet, brokers []string, stderr io.Writer) error {
	if len(brokers) == 0 {
		brokers = cred.Brokers
		if len(brokers) == 0 {
			brokers = []string{cred.Broker}
		}
		for _, b := range brokers {
			if u, err := url.Parse(b); err == nil {
				if ip := net.ParseIP(u.Hostname()); u.Hostname() == "localhost" || (ip != nil && (ip.IsLoopback() || ip.IsUnspecified())) {
					fmt.Fprintf(stderr, "warning: the bundle names broker %s, which a device elsewhere cannot reach; give --broker tcp://HOST:PORT\n", b)
				}
			}
		}
	}
	if len(f.Labels) == 0 {
		f.Labels = nil
	}
	f.Name, f.Device, f.Username = cred.Fleet, cred.Device, cred.Username
	bundle := enrolment.Bundle{
		Created:  time.Now().UTC().Truncate(time.Second),
		Fleet:    f,
		Root:     cred.Root,
		Password: cred.Password,
	}
	bundle.Fleet.SetBrokers(brokers)
	b, err := bundle.Marshal()
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(path, b, atomicfile.Options{Perm: 0o600})
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
