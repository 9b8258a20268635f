package broker

import (
	"fmt"
	"io"

	"github.com/outpost-edge/outpost/protocol"
)

// MosquittoACL writes a Mosquitto acl_file that gives an external Mosquitto
// the embedded broker's rules for fleet: pattern rules confine every device
// (user name = device id, %u) to its own topics, and the controller's user
// (ControllerUser) may use every topic of the fleet. Pair it with a
// password_file (mosquitto_passwd), allow_anonymous false and
// use_username_as_clientid true (docs/SECURITY.md).
func MosquittoACL(w io.Writer, fleet string) error {
	req, err := protocol.ArtifactsReqTopic(fleet)
	if err != nil {
		return fmt.Errorf("broker: %w", err)
	}
	base := "outpost/v1/" + fleet
	_, err = fmt.Fprintf(w, `# Outpost fleet %[1]q: Mosquitto acl_file made by outpost-fleet broker acl.
# Every device logs in with its device id as user name; it may publish only
# its own state, status, events and ack and the artifacts request topic, and
# subscribe only to its own cmd and chunk. Nothing is granted to anonymous
# clients.

# The controller.
user %[4]s
topic readwrite %[2]s/#

# Every device (%%u is its user name).
pattern write %[2]s/%%u/state
pattern write %[2]s/%%u/status
pattern write %[2]s/%%u/events
pattern write %[2]s/%%u/ack
pattern write %[3]s
pattern read %[2]s/%%u/cmd
pattern read %[2]s/%%u/chunk
`, fleet, base, req, ControllerUser)
	if err != nil {
		return fmt.Errorf("broker: acl: %w", err)
	}
	return nil
}
