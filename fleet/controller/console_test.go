package controller_test

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/fleet/console"
	"github.com/outpost-edge/outpost/fleet/controller"
	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/protocol"
)

// TestConsoleMount: the admin listener serves the console's assets without
// a token (and / leads there) while the API still wants one; the devices
// list pages and searches with ?limit=&cursor=&q= and stays a plain array
// without them; the overview, whoami and a device's updates answer.
func TestConsoleMount(t *testing.T) {
	f := startFleet(t, controller.Options{})
	base := "http://" + f.c.AdminAddr()
	c := authClient{t: t, base: base}
	root := c.mint("", "admin", "root")
	viewer := c.mint(root.Token, "viewer", "vic")
	for i := range 7 {
		if _, err := f.c.Registry().UpdateDevice(fmt.Sprintf("gw-%d", i), func(d *registry.Device) {
			d.Labels = map[string]string{"site": []string{"north", "south"}[i%2]}
			d.Online = i < 3
			d.Models = []protocol.ModelStatus{{Name: "m", Version: 1}}
		}); err != nil {
			t.Fatal(err)
		}
	}

	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noRedirect.Get(base + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != console.Prefix {
		t.Fatalf("GET /: got %d to %q, want 302 to %s", resp.StatusCode, resp.Header.Get("Location"), console.Prefix)
	}
	resp, err = noRedirect.Get(base + "/console")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 3 || resp.Header.Get("Location") != console.Prefix {
		t.Fatalf("GET /console: got %d to %q, want a redirect to %s", resp.StatusCode, resp.Header.Get("Location"), console.Prefix)
	}
	h := c.call("", "GET", "/console/", "", nil, 200, nil)
	if h.Get("Content-Security-Policy") != console.CSP {
		t.Fatalf("console without the CSP: %v", h)
	}
	c.call("", "GET", "/console/app.js", "", nil, 200, nil)
	c.call("", "GET", "/v1/devices", "", nil, 401, nil)
	c.call("", "GET", "/v1/nothing", "", nil, 401, nil)
	c.call(viewer.Token, "POST", "/console/", "", nil, 403, nil)

	// Old clients: the whole list, an array.
	var all []registry.Device
	c.call(viewer.Token, "GET", "/v1/devices", "", nil, 200, &all)
	if len(all) != 7 {
		t.Fatalf("plain list: got %d devices, want 7", len(all))
	}
	// Pages of 3 by cursor.
	var ids []string
	cursor := ""
	for range 5 {
		var p registry.DevicePage
		c.call(viewer.Token, "GET", "/v1/devices?limit=3&cursor="+url.QueryEscape(cursor), "", nil, 200, &p)
		if p.Total != 7 {
			t.Fatalf("total: got %d, want 7", p.Total)
		}
		for _, d := range p.Devices {
			ids = append(ids, d.ID)
		}
		if cursor = p.Next; cursor == "" {
			break
		}
	}
	if got := strings.Join(ids, " "); got != "gw-0 gw-1 gw-2 gw-3 gw-4 gw-5 gw-6" {
		t.Fatalf("pages: got %s", got)
	}
	var p registry.DevicePage
	c.call(viewer.Token, "GET", "/v1/devices?q=SOUTH&limit=2", "", nil, 200, &p)
	if p.Total != 3 || len(p.Devices) != 2 || p.Devices[0].ID != "gw-1" || p.Next == "" {
		t.Fatalf("search south: %+v", p)
	}
	c.call(viewer.Token, "GET", "/v1/devices?limit=0", "", nil, 400, nil)
	c.call(viewer.Token, "GET", "/v1/devices?limit=501", "", nil, 400, nil)
	c.call(viewer.Token, "GET", "/v1/devices?cursor=%25%25", "", nil, 400, nil)

	var sum registry.FleetSummary
	c.call(viewer.Token, "GET", "/v1/overview", "", nil, 200, &sum)
	if sum.Devices != 7 || sum.Online != 3 || len(sum.Versions) != 1 || sum.Versions[0].Devices != 7 {
		t.Fatalf("overview: %+v", sum)
	}
	var me map[string]string
	c.call(viewer.Token, "GET", "/v1/whoami", "", nil, 200, &me)
	if me["role"] != "viewer" || me["name"] != "vic" || me["id"] != viewer.ID {
		t.Fatalf("whoami: %v", me)
	}
	var ups struct {
		Device  string                `json:"device"`
		Updates []registry.Assignment `json:"updates"`
	}
	c.call(viewer.Token, "GET", "/v1/devices/gw-1/updates", "", nil, 200, &ups)
	if ups.Device != "gw-1" || ups.Updates == nil || len(ups.Updates) != 0 {
		t.Fatalf("updates of gw-1: %+v", ups)
	}
	c.call(viewer.Token, "GET", "/v1/devices/gw-99/updates", "", nil, 404, nil)

	// Rollouts filtered by state and the newest N.
	now := time.Now()
	for i, st := range []registry.RolloutState{registry.RolloutCompleted, registry.RolloutRunning, registry.RolloutAborted, registry.RolloutPaused} {
		if err := f.c.Registry().PutRollout(&registry.Rollout{ID: fmt.Sprintf("ro-%d", i), Model: "m", Version: 1, Waves: []int{100},
			State: st, Created: now.Add(time.Duration(i) * time.Second)}); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		query string
		want  string
	}{
		{"", "ro-0 ro-1 ro-2 ro-3"},
		{"?state=running,paused", "ro-1 ro-3"},
		{"?state=aborted", "ro-2"},
		{"?limit=2", "ro-2 ro-3"},
		{"?state=completed,running&limit=1", "ro-1"},
	} {
		var reps []struct {
			ID string `json:"id"`
		}
		c.call(viewer.Token, "GET", "/v1/rollouts"+tc.query, "", nil, 200, &reps)
		var got []string
		for _, r := range reps {
			got = append(got, r.ID)
		}
		if strings.Join(got, " ") != tc.want {
			t.Errorf("rollouts%s: got %v, want %s", tc.query, got, tc.want)
		}
	}
	for i, d := range []string{"gw-2", "gw-0", "gw-1"} {
		if _, err := f.c.Registry().UpdateAssignment("ro-1", d, true, func(a *registry.Assignment) bool { a.Wave = i; return true }); err != nil {
			t.Fatal(err)
		}
	}
	for q, want := range map[string]string{"": "gw-0 gw-1 gw-2", "?limit=2": "gw-0 gw-1", "?limit=9": "gw-0 gw-1 gw-2"} {
		var as []registry.Assignment
		c.call(viewer.Token, "GET", "/v1/rollouts/ro-1/devices"+q, "", nil, 200, &as)
		var got []string
		for _, a := range as {
			got = append(got, a.Device)
		}
		if strings.Join(got, " ") != want {
			t.Errorf("devices of ro-1%s: got %v, want %s", q, got, want)
		}
	}
	c.call(viewer.Token, "GET", "/v1/rollouts/ro-1/devices?limit=0", "", nil, 400, nil)
	c.call(viewer.Token, "GET", "/v1/rollouts?state=lost", "", nil, 400, nil)
	c.call(viewer.Token, "GET", "/v1/rollouts?limit=-1", "", nil, 400, nil)
}
