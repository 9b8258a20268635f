package controller_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/fleet/admin"
	"github.com/outpost-edge/outpost/fleet/alerts"
	"github.com/outpost-edge/outpost/fleet/controller"
	"github.com/outpost-edge/outpost/fleet/registry"
)

// TestDeviceOfflineAlerts: a device that goes offline and comes back
// within the grace leaves a cancelled row and sends nothing; one that stays
// away leaves a row held until the grace ends; an event emitted through
// the controller's outbox reaches a real receiver, signed.
func TestDeviceOfflineAlerts(t *testing.T) {
	const secret = "controller-test-secret-0123"
	var mu sync.Mutex
	var got []http.Header
	var bodies [][]byte
	rc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		got, bodies = append(got, r.Header.Clone()), append(bodies, b)
		mu.Unlock()
	}))
	defer rc.Close()
	const grace = time.Hour
	f := startFleet(t, controller.Options{Alerts: alerts.Config{OfflineGrace: grace,
		Webhooks: []alerts.Webhook{{Name: "ops", URL: rc.URL, Secret: secret}}}})
	ds := f.devices(2, "", nil)
	f.waitDevices(2)
	reg := f.c.Registry()
	rows := func() []registry.AlertDelivery {
		r, err := reg.AlertDeliveries(registry.AlertQuery{})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	offline := func(dev string) func() (bool, string) {
		return func() (bool, string) {
			d, err := reg.Device(dev)
			return err == nil && !d.Online, "still online"
		}
	}
	ds.stop(0)
	ds.stop(1)
	eventually(t, 30*time.Second, "both offline", func() (bool, string) {
		a, _ := offline(devName(0))()
		b, _ := offline(devName(1))()
		return a && b && len(rows()) == 2, "not yet"
	})
	ds.start(0)
	eventually(t, 30*time.Second, "dev-000's event withdrawn", func() (bool, string) {
		for _, r := range rows() {
			if r.Subject == devName(0) {
				return r.State == registry.AlertCancelled, r.State
			}
		}
		return false, "no row"
	})
	for _, r := range rows() {
		if r.Subject != devName(1) {
			continue
		}
		if r.State != registry.AlertPending || r.Event != string(alerts.DeviceOffline) || r.Due.Sub(r.Created) < grace-time.Minute {
			t.Fatalf("dev-001's row: %+v, want pending and held for the grace", r)
		}
		var b struct {
			Event alerts.Type       `json:"event"`
			Fleet string            `json:"fleet"`
			Data  alerts.DeviceData `json:"data"`
		}
		if err := json.Unmarshal(r.Body, &b); err != nil {
			t.Fatal(err)
		}
		if b.Event != alerts.DeviceOffline || b.Fleet != fleetName || b.Data.Device != devName(1) || b.Data.Labels["site"] != "south" {
			t.Fatalf("body %s", r.Body)
		}
	}
	// The admin API lists the outbox and refuses what it cannot list.
	for q, want := range map[string]int{"?state=cancelled": 200, "?state=bogus": 400, "?limit=0": 400, "?limit=1001": 400, "?before=x": 400, "": 200} {
		resp, err := http.Get("http://" + f.c.AdminAddr() + "/v1/alerts/deliveries" + q)
		if err != nil {
			t.Fatal(err)
		}
		var list admin.DeliveryList
		_ = json.NewDecoder(resp.Body).Decode(&list)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET /v1/alerts/deliveries%s: %d, want %d", q, resp.StatusCode, want)
		}
		if q == "?state=cancelled" && (len(list.Deliveries) != 1 || list.Deliveries[0].Subject != devName(0)) {
			t.Errorf("cancelled: %+v, want dev-000's row", list.Deliveries)
		}
	}
	// A viewer reads the outbox too, filtered by webhook, and never sees a
	// body or a secret.
	base := "http://" + f.c.AdminAddr()
	token := func(auth, body string) string {
		req, _ := http.NewRequest("POST", base+"/v1/tokens", strings.NewReader(body))
		if auth != "" {
			req.Header.Set("Authorization", "Bearer "+auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var tk struct{ Token string }
		if err := json.NewDecoder(resp.Body).Decode(&tk); err != nil || resp.StatusCode != http.StatusCreated {
			t.Fatalf("token %s: %d %v", body, resp.StatusCode, err)
		}
		return tk.Token
	}
	root := token("", `{"role":"admin","name":"root"}`)
	viewer := token(root, `{"role":"viewer","name":"vera"}`)
	for q, n := range map[string]int{"?webhook=ops": 2, "?webhook=nobody": 0} {
		req, _ := http.NewRequest("GET", base+"/v1/alerts/deliveries"+q, nil)
		req.Header.Set("Authorization", "Bearer "+viewer)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var list admin.DeliveryList
		if err := json.Unmarshal(raw, &list); err != nil || resp.StatusCode != http.StatusOK || len(list.Deliveries) != n {
			t.Fatalf("viewer GET deliveries%s: %d %v: %s", q, resp.StatusCode, err, raw)
		}
		if strings.Contains(string(raw), `"body"`) || strings.Contains(string(raw), secret) {
			t.Errorf("the deliveries show a body or the secret: %s", raw)
		}
	}

	// The controller's outbox delivers (what drift detection will emit).
	if err := f.c.Alerts().Emit(context.Background(), alerts.DriftEvent(alerts.DriftData{Model: "face", Version: "2", State: "drifting",
		Since: time.Now()})); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the drift event at the receiver", func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		return len(got) > 0, "nothing received"
	})
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 || got[0].Get(alerts.HeaderEvent) != "drift" {
		t.Fatalf("received %d posts (%v), want one drift", len(got), got)
	}
	if err := alerts.Verify([]byte(secret), got[0].Get(alerts.HeaderSignature), bodies[0], time.Now(), time.Minute); err != nil {
		t.Fatal(err)
	}
}
