package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/outpost-edge/outpost/agent/config"
	"github.com/outpost-edge/outpost/agent/store"
	"github.com/outpost-edge/outpost/internal/atomicfile"
	"github.com/outpost-edge/outpost/internal/enrolment"
	"github.com/outpost-edge/outpost/internal/subcommand"
	"github.com/outpost-edge/outpost/models/trust"
	"go.yaml.in/yaml/v3"
)

var enrollCommand = subcommand.Command{
	Name:    "enroll",
	Summary: "join a fleet: install an enrolment bundle from outpost-fleet devices enroll --bundle",
	Run:     runEnroll,
}

// Where an enrolment puts the device's broker password: a directory only
// the agent's user may enter, a file only it may read.
const (
	credentialDir  = "fleet"
	credentialFile = "password"
)

// runEnroll installs a bundle: the root into the store (DATA_DIR/store/root.json,
// the anchor the agent reads first) and the provisioned root file (fleet.root,
// default DATA_DIR/root.json), the password into DATA_DIR/fleet/password (0600, directory 0700), then
// the config's fleet section, last, so that a config naming the fleet
// always finds both in place. Each file is replaced atomically.
func runEnroll(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("enroll", stderr)
	dataDir := fs.String("data-dir", "", "the agent's data directory (required)")
	cfgPath := fs.String("config", "", "the agent config whose fleet section to write or update (default DATA_DIR/agent.yaml)")
	force := fs.Bool("force", false, "replace an existing enrolment (and a different trust root) in the data dir and config")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: outpost-agent enroll BUNDLE --data-dir DIR [--config agent.yaml] [--force]\n\nInstalls the bundle from outpost-fleet devices enroll --bundle: the fleet's root.json, the broker password and the config's fleet section.")
		fs.PrintDefaults()
	}
	pos, err := subcommand.ParseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || *dataDir == "" {
		fs.Usage()
		return subcommand.UsageError("expected --data-dir and exactly one bundle file")
	}
	b, err := readBundle(pos[0])
	if err != nil {
		return err
	}
	data, err := filepath.Abs(*dataDir)
	if err != nil {
		return err
	}
	if *cfgPath == "" {
		*cfgPath = filepath.Join(data, "agent.yaml")
	}
	doc, cfg, err := readAgentConfig(*cfgPath)
	if err != nil {
		return err
	}
	if cfg.DataDir != "" {
		if d, err := filepath.Abs(cfg.DataDir); err != nil || d != data {
			return fmt.Errorf("enroll: %s has data_dir %s, not %s: enrol into the data dir the agent uses", *cfgPath, cfg.DataDir, data)
		}
	}
	pwPath := filepath.Join(data, credentialDir, credentialFile)
	if !*force {
		if cfg.Fleet.Linked() {
			return fmt.Errorf("enroll: %s already joins fleet %q as %q (broker %s); --force replaces the enrolment", *cfgPath, cfg.Fleet.Name, cfg.Fleet.Device, strings.TrimPrefix(strings.Join(append([]string{cfg.Fleet.Broker}, cfg.Fleet.Brokers...), ","), ","))
		}
		if _, err := os.Stat(pwPath); err == nil {
			return fmt.Errorf("enroll: %s holds a broker password from an earlier enrolment; --force replaces it", pwPath)
		}
	}

	// The new config is made and checked before anything is written.
	newCfg, err := fleetSection(*cfgPath, doc, data, pwPath, b.Fleet)
	if err != nil {
		return err
	}
	provisioned, err := provisionedRoot(newCfg)
	if err != nil {
		return err
	}
	existed := listTree(data)
	st, err := store.OpenDataDir(data, store.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return fmt.Errorf("enroll: %w", err)
	}
	root, err := installRoot(st, provisioned, b.Root, *force)
	if err != nil {
		return err
	}
	if err := writeCredential(pwPath, b.Password); err != nil {
		return err
	}
	// Run as root for an agent that runs as its own user (the package's
	// outpost): what enroll wrote in the data dir goes to the data dir's
	// owner, or the agent could not read its own password.
	if err := matchOwner(data, existed, filepath.Join(store.DirIn(data), "root.json"), provisioned, filepath.Dir(pwPath), pwPath); err != nil {
		return err
	}
	if err := writeConfig(*cfgPath, newCfg); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "enrolled %s in fleet %s (broker %s): root v%d in %s and %s, broker password %s (0600), config %s\n",
		b.Fleet.Device, b.Fleet.Name, strings.Join(b.Fleet.BrokerList(), ","), root.Doc.Version, store.DirIn(data), provisioned, pwPath, *cfgPath)
	fmt.Fprintf(stdout, "start the agent with: outpost-agent serve --config %s; then delete %s (it holds the password)\n", *cfgPath, pos[0])
	return nil
}

// readBundle reads and checks a bundle file.
func readBundle(path string) (*enrolment.Bundle, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, enrolment.MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("enroll: %s: %w", path, err)
	}
	b, err := enrolment.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("enroll: %s: %w", path, err)
	}
	return b, nil
}

// readAgentConfig reads the config as a YAML tree (to update it keeping its
// comments and other keys) and as a Config (to check it). A missing file is
// an empty config.
func readAgentConfig(path string) (*yaml.Node, config.Config, error) {
	raw, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return &yaml.Node{}, config.Config{}, nil
	}
	if err != nil {
		return nil, config.Config{}, fmt.Errorf("enroll: %w", err)
	}
	cfg, err := config.Parse(raw)
	if err != nil {
		return nil, config.Config{}, fmt.Errorf("enroll: %s: %w", path, err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return nil, config.Config{}, fmt.Errorf("enroll: %s: %w", path, err)
	}
	return &doc, cfg, nil
}

// installRoot makes the bundle's root the device's trust anchor: the
// store's root, which the updater consults first (agent/updater anchor),
// and then the provisioned file (fleet.root), so the two agree. The root
// the device trusts now is the store's, or the provisioned file if the
// store holds none. The same root, or an older one of the same fleet (the
// device already followed a rotation), keeps that root; the next root of
// it is taken; any other root is taken only with force.
func installRoot(st *store.Store, provisioned string, raw []byte, force bool) (*trust.Root, error) {
	root, err := trust.LoadRoot(raw)
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	current, err := st.Root()
	if errors.Is(err, store.ErrNotFound) {
		if current, err = os.ReadFile(provisioned); errors.Is(err, fs.ErrNotExist) {
			current, err = nil, nil
		}
	}
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	keep, replace := root, false
	if current != nil && !bytes.Equal(current, raw) {
		old, lerr := trust.LoadRoot(current)
		switch {
		case lerr == nil && old.Doc.Version > root.Doc.Version && chains(root, current):
			keep = old // a newer root of this fleet, reached by rotation
		case lerr == nil && old.Doc.Version < root.Doc.Version && chains(old, raw):
			// the next root of the trusted one: SaveRoot takes it
		case !force:
			return nil, errors.New("enroll: the data dir trusts another root than the bundle's (another fleet, or a root the bundle does not follow from); --force replaces it")
		default:
			// The store never goes back to an older or unrelated root by
			// itself: the operator said so.
			replace = true
		}
	}
	save := st.SaveRoot
	if replace {
		save = st.ReplaceRoot
	}
	if err := save(keep); err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(provisioned), 0o755); err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	if err := atomicfile.WriteFile(provisioned, keep.Raw, atomicfile.Options{Perm: 0o644}); err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	return keep, nil
}

// chains reports whether next follows from r by signed rotation.
func chains(r *trust.Root, next []byte) bool {
	_, err := r.Chain([][]byte{next})
	return err == nil
}

// writeCredential writes the password file (0600) in its own directory
// (0700), tightening the directory's mode if it exists.
func writeCredential(path, password string) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("enroll: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("enroll: %w", err)
	}
	if err := atomicfile.WriteFile(path, []byte(password+"\n"), atomicfile.Options{Perm: 0o600}); err != nil {
		return fmt.Errorf("enroll: %w", err)
	}
	return nil
}

// listTree returns the paths under dir (none if it does not exist).
func listTree(dir string) map[string]bool {
	seen := map[string]bool{}
	_ = filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err == nil {
			seen[p] = true
		}
		return nil
	})
	return seen
}

// matchOwner gives the owner of dir to what enroll wrote there: paths, and
// whatever under dir is not in existed (the store's directories). It does
// so only as root; other users cannot give files away.
func matchOwner(dir string, existed map[string]bool, paths ...string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("enroll: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || st.Uid == 0 {
		return nil
	}
	mine := map[string]bool{}
	for _, p := range paths {
		mine[p] = true
	}
	return filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("enroll: %w", err)
		}
		if p == dir || (existed[p] && !mine[p]) {
			return nil
		}
		if err := os.Lchown(p, int(st.Uid), int(st.Gid)); err != nil {
			return fmt.Errorf("enroll: %w", err)
		}
		return nil
	})
}

// fleetSection sets data_dir (when missing) and the fleet keys the bundle
// carries in doc, leaving every other key and comment as it was, and
// checks the result as the agent would.
func fleetSection(path string, doc *yaml.Node, dataDir, pwPath string, f enrolment.Fleet) ([]byte, error) {
	if doc.Kind == 0 {
		doc.Kind = yaml.DocumentNode
	}
	if len(doc.Content) == 0 {
		doc.Content = []*yaml.Node{{Kind: yaml.MappingNode}}
	}
	top := doc.Content[0]
	if top.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("enroll: %s is not a YAML mapping", path)
	}
	if mapGet(top, "data_dir") == nil {
		mapSet(top, "data_dir", scalar(dataDir))
	}
	fleet := mapGet(top, "fleet")
	if fleet == nil || fleet.Kind != yaml.MappingNode {
		fleet = &yaml.Node{Kind: yaml.MappingNode}
		mapSet(top, "fleet", fleet)
	}
	// One broker is fleet.broker, a cluster's nodes fleet.brokers; never
	// both, or the first node would be tried twice.
	if list := f.BrokerList(); len(list) > 1 {
		seq := &yaml.Node{Kind: yaml.SequenceNode, Style: yaml.FlowStyle}
		for _, u := range list {
			seq.Content = append(seq.Content, scalar(u))
		}
		mapDelete(fleet, "broker")
		mapSet(fleet, "brokers", seq)
	} else {
		mapDelete(fleet, "brokers")
		mapSet(fleet, "broker", scalar(f.Broker))
	}
	for _, kv := range [][2]string{{"name", f.Name}, {"device", f.Device}, {"username", f.Username}, {"password_file", pwPath}} {
		mapSet(fleet, kv[0], scalar(kv[1]))
	}
	if len(f.Labels) > 0 {
		labels := &yaml.Node{Kind: yaml.MappingNode}
		keys := make([]string, 0, len(f.Labels))
		for k := range f.Labels {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			mapSet(labels, k, scalar(f.Labels[k]))
		}
		mapSet(fleet, "labels", labels)
	}
	// A bundle turns a clean session on and never off: a device set to
	// one by hand keeps it.
	if f.CleanSession {
		mapSet(fleet, "clean_session", &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!bool", Value: "true"})
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return nil, fmt.Errorf("enroll: %s: %w", path, err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("enroll: %s: %w", path, err)
	}
	cfg, err := config.Parse(buf.Bytes())
	if err == nil {
		err = cfg.WithDefaults().Validate()
	}
	if err != nil {
		return nil, fmt.Errorf("enroll: the updated %s would not load: %w", path, err)
	}
	return buf.Bytes(), nil
}

// provisionedRoot returns the fleet.root of config b, the file the agent
// reads its trust root from while the store holds none.
func provisionedRoot(b []byte) (string, error) {
	cfg, err := config.Parse(b)
	if err != nil {
		return "", fmt.Errorf("enroll: %w", err)
	}
	p, err := filepath.Abs(cfg.WithDefaults().Fleet.Root)
	if err != nil {
		return "", fmt.Errorf("enroll: %w", err)
	}
	return p, nil
}

// writeConfig replaces the config atomically, keeping its mode (0644 for a
// new one: it holds no secret).
func writeConfig(path string, b []byte) error {
	perm := os.FileMode(0o644)
	if fi, err := os.Stat(path); err == nil {
		perm = fi.Mode().Perm()
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("enroll: %w", err)
	}
	if err := atomicfile.WriteFile(path, b, atomicfile.Options{Perm: perm}); err != nil {
		return fmt.Errorf("enroll: %w", err)
	}
	return nil
}

func scalar(v string) *yaml.Node {
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: v}
}

// mapGet returns the value of key in mapping m, or nil.
func mapGet(m *yaml.Node, key string) *yaml.Node {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

// mapDelete removes key and its value from mapping m, if there.
func mapDelete(m *yaml.Node, key string) {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			m.Content = append(m.Content[:i], m.Content[i+2:]...)
			return
		}
	}
}

// mapSet replaces the value of key in mapping m, or appends the pair.
func mapSet(m *yaml.Node, key string, v *yaml.Node) {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			m.Content[i+1] = v
			return
		}
	}
	m.Content = append(m.Content, scalar(key), v)
}
