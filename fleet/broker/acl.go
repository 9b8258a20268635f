package broker

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/outpost-edge/outpost/protocol"
)

// ControllerUser is the MQTT user name of the fleet controller. No device
// may be enrolled under it (see CheckDeviceName).
const ControllerUser = "outpost-fleet"

// Credentials is the store of device credentials the broker checks logins
// against. The broker calls it on every CONNECT, from mochi's client
// goroutines: implementations must be safe for concurrent use.
type Credentials interface {
	// CredentialHash returns the stored hash (see HashSecret) of device's
	// current credential; ok is false, with a nil error, when the device
	// has none or it was revoked. err is for a store that cannot answer,
	// and the broker then refuses the login.
	CredentialHash(device string) (hash []byte, ok bool, err error)
	// AnyCredential reports whether at least one device holds a
	// credential (revoked ones count: revoking the last device does not
	// open the broker again).
	AnyCredential() (bool, error)
}

// secretLen is the size of a minted secret: 256 random bits.
const secretLen = 32

// NewSecret returns a fresh random secret of 256 bits, as the password a
// device (or the controller's own client) presents.
func NewSecret() (string, error) {
	b := make([]byte, secretLen)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("broker: secret: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// HashSecret is how a credential is kept at rest. A plain SHA-256 is enough
// here, where it would not be for a password a person chose: the secret has
// 256 bits of entropy, so guessing it from its hash is as hard as guessing
// it outright, and a slow hash (argon2id, bcrypt) would add nothing but a
// cost on every CONNECT. The device name and a domain string salt it, so
// equal secrets never give equal hashes and a hash copied to another device's
// record does not verify there.
func HashSecret(device, secret string) []byte {
	h := sha256.New()
	h.Write([]byte("outpost broker credential v1\x00"))
	h.Write([]byte(device))
	h.Write([]byte{0})
	h.Write([]byte(secret))
	return h.Sum(nil)
}

// CheckDeviceName reports whether name may be a device's MQTT identity: a
// valid topic segment, neither the controller's user name nor one of its
// client ids (outpost-fleet-<fleet>), which a device could otherwise use to
// take the controller's session over.
func CheckDeviceName(fleet, name string) error {
	if _, err := protocol.DeviceTopics(fleet, name); err != nil {
		return fmt.Errorf("broker: %w", err)
	}
	if name == ControllerUser || strings.HasPrefix(name, ControllerUser+"-") {
		return fmt.Errorf("broker: device name %q is reserved for the controller", name)
	}
	return nil
}

// authHook authenticates clients and confines each device to its own topics.
//
// Modes: open (Options.Open, or no legacy users and no Credentials store, or
// a store in which no device was ever enrolled) lets anyone connect and use
// any topic, as fit only for a demo on loopback. Otherwise the broker is
// locked: a client logs in as the controller (ControllerUser and the
// per-process secret), or as a device whose user name is its device id, whose
// client id equals its user name, and whose password is its credential (or a
// legacy mqtt.users password). A device may publish only its own state,
// status, events and ack and the fleet's artifacts request topic, and
// subscribe only to its own cmd and chunk.
type authHook struct {
	mochi.HookBase
	fleet      string
	open       bool
	users      map[string]string
	creds      Credentials
	controller string // the controller's secret, for this process only
	srv        *mochi.Server
	log        *slog.Logger
	// sealed latches once the store holds a credential: enrolments are
	// never deleted (revoked ones stay), so the broker never reopens, and
	// the ACL check on every message need not ask the store again.
	sealed atomic.Bool
}

func (*authHook) ID() string { return "outpost-auth" }

func (*authHook) Provides(b byte) bool {
	return b == mochi.OnConnectAuthenticate || b == mochi.OnACLCheck || b == mochi.OnSessionEstablished
}

// OnSessionEstablished checks a device's credential once more, now that the
// client is listed: a revocation stored between the login check and the
// listing finds no client to disconnect (Broker.Disconnect), so the client
// must find the revocation here. Either order cuts it off.
func (h *authHook) OnSessionEstablished(cl *mochi.Client, _ packets.Packet) {
	user := string(cl.Properties.Username)
	if cl.Net.Inline || user == ControllerUser || h.creds == nil || !h.locked() {
		return
	}
	if _, legacy := h.users[user]; legacy {
		return
	}
	if _, ok, err := h.creds.CredentialHash(user); ok && err == nil {
		return
	}
	h.log.Warn("mqtt session closed: credential revoked during login", "user", user)
	_ = h.srv.DisconnectClient(cl, packets.ErrNotAuthorized)
}

// locked reports whether logins and ACLs are enforced now.
func (h *authHook) locked() bool {
	if h.open {
		return false
	}
	if len(h.users) > 0 {
		return true
	}
	if h.creds == nil {
		return false
	}
	if h.sealed.Load() {
		return true
	}
	enrolled, err := h.creds.AnyCredential()
	if enrolled {
		h.sealed.Store(true)
	}
	return err != nil || enrolled // a store that cannot answer fails closed
}

func (h *authHook) OnConnectAuthenticate(cl *mochi.Client, pk packets.Packet) bool {
	user, pass := string(pk.Connect.Username), string(pk.Connect.Password)
	if user == ControllerUser {
		ok := subtle.ConstantTimeCompare([]byte(h.controller), []byte(pass)) == 1
		if !ok {
			h.log.Warn("mqtt login refused", "user", user, "client", cl.ID, "reason", "not this controller's secret")
		}
		return ok
	}
	if !h.locked() {
		return true
	}
	refuse := func(reason string) bool {
		h.log.Warn("mqtt login refused", "user", user, "client", cl.ID, "remote", cl.Net.Remote, "reason", reason)
		return false
	}
	if user == "" {
		return refuse("no user name")
	}
	if cl.ID != user {
		// A device could otherwise take another device's (or the
		// controller's) persistent session, subscriptions included.
		return refuse("client id differs from the user name")
	}
	if want, ok := h.users[user]; ok {
		return subtle.ConstantTimeCompare([]byte(want), []byte(pass)) == 1 || refuse("wrong password")
	}
	if h.creds == nil {
		return refuse("unknown user")
	}
	hash, ok, err := h.creds.CredentialHash(user)
	switch {
	case err != nil:
		return refuse("credentials: " + err.Error())
	case !ok:
		return refuse("no credential (unknown or revoked device)")
	}
	return subtle.ConstantTimeCompare(hash, HashSecret(user, pass)) == 1 || refuse("wrong credential")
}

func (h *authHook) OnACLCheck(cl *mochi.Client, topic string, write bool) bool {
	if cl.Net.Inline || string(cl.Properties.Username) == ControllerUser || !h.locked() {
		return true
	}
	ok := DeviceMay(h.fleet, string(cl.Properties.Username), topic, write)
	if !ok {
		h.log.Warn("mqtt topic refused", "user", string(cl.Properties.Username), "topic", topic, "write", write)
	}
	return ok
}

// DeviceMay reports whether device may publish (write) to, or subscribe to,
// topic in fleet: publish its own state, status, events and ack and the
// fleet's artifacts request topic; subscribe to its own cmd and chunk.
// Wildcards are never allowed to a device.
func DeviceMay(fleet, device, topic string, write bool) bool {
	t, err := protocol.DeviceTopics(fleet, device)
	if err != nil {
		return false
	}
	if write {
		switch topic {
		case t.State, t.Status, t.Events, t.Ack, t.ArtifactsReq:
			return true
		}
		return false
	}
	return topic == t.Cmd || topic == t.Chunk
}
