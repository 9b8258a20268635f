package admin

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/outpost-edge/outpost/fleet/broker"
	"github.com/outpost-edge/outpost/fleet/registry"
)

// Disconnecter closes a device's broker connection once its credential is
// revoked. It must be safe for concurrent use; a device that is not
// connected is not an error (it reports false).
type Disconnecter interface {
	Disconnect(device string) bool
}

// EnrollRequest is the (optional) body of POST /v1/devices/{id}/credential.
type EnrollRequest struct {
	// Replace mints a new credential for a device that already holds one;
	// the old one stops working at once.
	Replace bool `json:"replace,omitempty"`
}

// Credential is the answer to an enrolment: the device's MQTT user name
// (its id) and password, and what else a bootstrap bundle needs (the fleet
// name, the broker devices reach, the trust root). The password is shown
// this once; the controller keeps only its hash.
type Credential struct {
	Device   string `json:"device"`
	Username string `json:"username"`
	Password string `json:"password"`
	Fleet    string `json:"fleet"`
	// Broker is the broker URL the controller knows (Options.Broker); the
	// client may have to name one devices can reach instead.
	Broker string `json:"broker,omitempty"`
	// Root is the fleet's newest root.json, exact bytes (base64 in JSON).
	Root []byte `json:"root"`
}

// RevokeResult is the answer to DELETE /v1/devices/{id}/credential.
type RevokeResult struct {
	Device string `json:"device"`
	// Disconnected is true when the device was connected to the embedded
	// broker and was cut off.
	Disconnected bool `json:"disconnected"`
}

func (s *Server) enroll(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	var req EnrollRequest
	if r.ContentLength != 0 {
		if err := readJSON(w, r, &req); err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
	}
	if err := broker.CheckDeviceName(s.opts.Fleet, id); err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	if c, err := s.opts.Registry.Credential(id); err == nil && c.Revoked == nil && !req.Replace {
		writeError(w, http.StatusConflict, fmt.Errorf("device %s already holds a credential (replace it with replace: true)", id))
		return
	} else if err != nil && !errors.Is(err, registry.ErrNotFound) {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	secret, err := broker.NewSecret()
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	if err := s.opts.Registry.PutCredential(id, broker.HashSecret(id, secret), s.opts.Now()); err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	if req.Replace && s.opts.Disconnect != nil {
		s.opts.Disconnect.Disconnect(id) // its old credential no longer holds
	}
	s.log.Info("device enrolled", "device", id, "replace", req.Replace)
	writeJSON(w, http.StatusCreated, Credential{Device: id, Username: id, Password: secret,
		Fleet: s.opts.Fleet, Broker: s.opts.Broker, Root: s.opts.Root.Raw})
}

func (s *Server) revoke(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := s.opts.Registry.RevokeCredential(id, s.opts.Now()); err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	res := RevokeResult{Device: id}
	if s.opts.Disconnect != nil {
		res.Disconnected = s.opts.Disconnect.Disconnect(id)
	}
	s.log.Info("device credential revoked", "device", id, "disconnected", res.Disconnected)
	writeJSON(w, http.StatusOK, res)
}
