package rollout

import (
	"encoding/json"
	"testing"

	"github.com/outpost-edge/outpost/fleet/alerts"
	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/protocol"
	"github.com/stretchr/testify/require"
)

// TestHaltAlerts: a halted rollout puts one rollout_halted event in the
// outbox; an engine started afterwards (a restart, a new leader) emits it
// again, which adds nothing for a webhook that has it and reaches one
// that did not.
func TestHaltAlerts(t *testing.T) {
	f := newGateFixture(t, 10)
	outbox := func(hooks ...string) *alerts.Outbox {
		var ws []alerts.Webhook
		for _, h := range hooks {
			ws = append(ws, alerts.Webhook{Name: h, URL: "http://127.0.0.1:9/" + h, Secret: "0123456789abcdef0123"})
		}
		o, err := alerts.New(alerts.Options{Registry: f.reg, Fleet: "acme", Config: alerts.Config{Webhooks: ws}})
		require.NoError(t, err)
		return o
	}
	var err error
	f.eng, err = New(Options{Registry: f.reg, Sender: f.rec, Fleet: "acme", Now: f.clock, Alerts: outbox("a")})
	require.NoError(t, err)
	ro, err := f.eng.Create(Spec{Model: "face", Version: 2, Waves: []int{100}, MaxFailureRatio: 0.1})
	require.NoError(t, err)
	f.step()
	f.answer(ro.ID, func(string) protocol.UpdateState { return protocol.UpdateFailed })
	f.step()
	require.Equal(t, registry.RolloutHalted, f.rollout(ro.ID).State)
	rows, err := f.reg.AlertDeliveries(registry.AlertQuery{})
	require.NoError(t, err)
	require.Len(t, rows, 1)
	require.Equal(t, "a", rows[0].Webhook)
	require.Equal(t, string(alerts.RolloutHalted), rows[0].Event)
	var body struct {
		Event alerts.Type        `json:"event"`
		Data  alerts.RolloutData `json:"data"`
	}
	require.NoError(t, json.Unmarshal(rows[0].Body, &body))
	require.Equal(t, ro.ID, body.Data.Rollout)
	require.Equal(t, "face", body.Data.Model)
	require.Equal(t, "2", body.Data.Version)
	require.Equal(t, 1, body.Data.Wave)
	require.Contains(t, body.Data.Reason, "gate failed in wave 1")

	f.eng, err = New(Options{Registry: f.reg, Sender: f.rec, Fleet: "acme", Now: f.clock, Alerts: outbox("a", "b")})
	require.NoError(t, err)
	f.step()
	rows, err = f.reg.AlertDeliveries(registry.AlertQuery{})
	require.NoError(t, err)
	require.Len(t, rows, 2, "a keeps its one row; b gets the halt at the new engine's start")
	require.Equal(t, "b", rows[0].Webhook)
	require.Equal(t, rows[0].EventID, rows[1].EventID)
	f.step()
	rows, err = f.reg.AlertDeliveries(registry.AlertQuery{})
	require.NoError(t, err)
	require.Len(t, rows, 2, "only an engine's start emits again")

	// An operator's abort is not a halt: no alert.
	ro2, err := f.eng.Create(Spec{Model: "face", Version: 2, Waves: []int{100}, MaxFailureRatio: 0.1})
	require.NoError(t, err)
	f.step()
	_, err = f.eng.Abort(ro2.ID, "changed my mind")
	require.NoError(t, err)
	f.step()
	require.Equal(t, registry.RolloutAborted, f.rollout(ro2.ID).State)
	rows, err = f.reg.AlertDeliveries(registry.AlertQuery{})
	require.NoError(t, err)
	require.Len(t, rows, 2, "an abort alerted")
}
