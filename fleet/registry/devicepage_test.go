package registry

import (
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/testpg"
	"github.com/outpost-edge/outpost/protocol"
)

// putDevices stores n devices gw-00000... in one transaction; every third
// is online, sites alternate north/south, and each serves model m version
// 1 + i%3 with health ok, degraded or failing by i%3.
func putDevices(t testing.TB, r *Registry, n int) {
	t.Helper()
	err := r.write(func(tx *sql.Tx) error {
		for i := range n {
			d, err := r.lockDevice(tx, fmt.Sprintf("gw-%05d", i))
			if err != nil {
				return err
			}
			d.Labels = map[string]string{"site": []string{"north", "south"}[i%2]}
			d.Online = i%3 == 0
			d.AgentVersion = "1.0." + fmt.Sprint(i%2)
			d.Models = []protocol.ModelStatus{{Name: "m", Version: int64(1 + i%3)}}
			d.Health = protocol.HealthSummary{Status: []string{"ok", "degraded", "failing"}[i%3]}
			if err := r.saveDevice(tx, d); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestDevicesPage(t *testing.T) { eachEngine(t, testDevicesPage) }

func testDevicesPage(t *testing.T, newTarget func(*testing.T) target) {
	r := newTarget(t).open(t)
	defer r.Close()
	putDevices(t, r, 25)
	// Wildcards in ids are searched literally.
	if _, err := r.UpdateDevice("odd_100%", func(*Device) {}); err != nil {
		t.Fatal(err)
	}

	var ids []string
	cursor, pages := "", 0
	for {
		p, err := r.DevicesPage(DeviceQuery{Cursor: cursor, Limit: 10})
		if err != nil {
			t.Fatal(err)
		}
		if p.Total != 26 {
			t.Fatalf("total: got %d, want 26", p.Total)
		}
		pages++
		for _, d := range p.Devices {
			ids = append(ids, d.ID)
		}
		if p.Next == "" {
			break
		}
		cursor = p.Next
	}
	if pages != 3 || len(ids) != 26 || !slices.IsSorted(ids) || ids[0] != "gw-00000" || ids[25] != "odd_100%" {
		t.Fatalf("paged: got %d pages of %v, want 3 pages, 26 ids in order", pages, ids)
	}

	for _, tc := range []struct {
		q     string
		limit int
		want  []string
		total int
	}{
		{q: "gw-0001", limit: 50, want: []string{"gw-00010", "gw-00011", "gw-00012", "gw-00013", "gw-00014", "gw-00015", "gw-00016", "gw-00017", "gw-00018", "gw-00019"}, total: 10},
		{q: "GW-0002", limit: 2, want: []string{"gw-00020", "gw-00021"}, total: 5},
		{q: "SOUTH", limit: 3, want: []string{"gw-00001", "gw-00003", "gw-00005"}, total: 12},
		{q: "1.0.1", limit: 1, want: []string{"gw-00001"}, total: 12},
		{q: "_1", limit: 50, want: []string{"odd_100%"}, total: 1},
		{q: "0%", limit: 50, want: []string{"odd_100%"}, total: 1},
		{q: "nothing", limit: 50, want: nil, total: 0},
	} {
		p, err := r.DevicesPage(DeviceQuery{Q: tc.q, Limit: tc.limit})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, d := range p.Devices {
			got = append(got, d.ID)
		}
		if !slices.Equal(got, tc.want) || p.Total != tc.total || (p.Next != "") != (tc.total > len(tc.want)) {
			t.Errorf("q %q: got %v total %d next %q, want %v total %d", tc.q, got, p.Total, p.Next, tc.want, tc.total)
		}
	}
	// The search's cursor carries on after the page.
	p, err := r.DevicesPage(DeviceQuery{Q: "south", Limit: 3})
	if err != nil {
		t.Fatal(err)
	}
	p, err = r.DevicesPage(DeviceQuery{Q: "south", Limit: 3, Cursor: p.Next})
	if err != nil || len(p.Devices) != 3 || p.Devices[0].ID != "gw-00007" {
		t.Fatalf("second page of south: %+v, %v", p, err)
	}
	if _, err := r.DevicesPage(DeviceQuery{Cursor: "not base64!"}); !errors.Is(err, ErrInvalidQuery) {
		t.Fatalf("bad cursor: got %v, want ErrInvalidQuery", err)
	}
	if p, err := r.DevicesPage(DeviceQuery{Limit: MaxDevicePage + 100}); err != nil || len(p.Devices) != 26 {
		t.Fatalf("large limit: %v", err)
	}

	s, err := r.Summary()
	if err != nil {
		t.Fatal(err)
	}
	wantVersions := []VersionCount{{"m", 1, 9}, {"m", 3, 8}, {"m", 2, 8}}
	if s.Devices != 26 || s.Online != 9 || !slices.Equal(s.Versions, wantVersions) ||
		s.Health["ok"] != 9 || s.Health["degraded"] != 8 || s.Health["failing"] != 8 || s.Health["unknown"] != 1 {
		t.Fatalf("summary: got %+v, want 26 devices, 9 online, versions %v, health 9/8/8/1", s, wantVersions)
	}
}

func TestDeviceAssignments(t *testing.T) { eachEngine(t, testDeviceAssignments) }

func testDeviceAssignments(t *testing.T, newTarget func(*testing.T) target) {
	r := newTarget(t).open(t)
	defer r.Close()
	now := time.Now()
	for i, id := range []string{"ro-b", "ro-a", "ro-c"} {
		if err := r.PutRollout(&Rollout{ID: id, Model: "m", Version: int64(i + 1), Waves: []int{100}, State: RolloutRunning,
			Created: now.Add(time.Duration(i) * time.Second)}); err != nil {
			t.Fatal(err)
		}
		if _, err := r.UpdateAssignment(id, "gw-1", true, func(a *Assignment) bool { a.State = protocol.UpdateCommitted; return true }); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.UpdateAssignment("ro-a", "gw-2", true, func(*Assignment) bool { return true }); err != nil {
		t.Fatal(err)
	}
	as, err := r.DeviceAssignments("gw-1")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range as {
		got = append(got, a.Rollout)
		if a.Device != "gw-1" || a.State != protocol.UpdateCommitted {
			t.Errorf("assignment %+v: want gw-1 committed", a)
		}
	}
	if want := []string{"ro-c", "ro-a", "ro-b"}; !slices.Equal(got, want) {
		t.Fatalf("history of gw-1: got %v, want %v (newest rollout first)", got, want)
	}
	if as, err := r.DeviceAssignments("gw-9"); err != nil || len(as) != 0 {
		t.Fatalf("history of an unknown device: %v, %v", as, err)
	}
}

// BenchmarkDevicesPage reads pages of a 10,000-device fleet as the console
// does: the first page, a page deep into the list (by cursor), a search
// matching a tenth of the fleet, a search matching one device, and the
// fleet summary. Each should answer in milliseconds (ns/op).
func BenchmarkDevicesPage(b *testing.B) {
	for _, eng := range []string{"sqlite", "postgres"} {
		b.Run(eng, func(b *testing.B) {
			tg := target{dir: b.TempDir()}
			if eng == "postgres" {
				tg.opts.Store = testpg.Database(b)
			}
			r, err := Open(tg.dir, tg.opts)
			if err != nil {
				b.Fatal(err)
			}
			defer r.Close()
			const n = 10000
			putDevices(b, r, n)
			deep, err := r.DevicesPage(DeviceQuery{Limit: 50, Cursor: cursorAfter("gw-07000")})
			if err != nil || len(deep.Devices) != 50 || deep.Devices[0].ID != "gw-07001" || deep.Total != n {
				b.Fatalf("deep page: %v", err)
			}
			for _, c := range []struct {
				name string
				run  func() (int, error)
				want int
			}{
				{"first", func() (int, error) { p, err := r.DevicesPage(DeviceQuery{Limit: 50}); return len(p.Devices), err }, 50},
				{"deep", func() (int, error) {
					p, err := r.DevicesPage(DeviceQuery{Limit: 50, Cursor: cursorAfter("gw-07000")})
					return len(p.Devices), err
				}, 50},
				{"search-tenth", func() (int, error) { p, err := r.DevicesPage(DeviceQuery{Q: "gw-01", Limit: 50}); return p.Total, err }, 1000},
				{"search-one", func() (int, error) {
					p, err := r.DevicesPage(DeviceQuery{Q: "gw-04242", Limit: 50})
					return p.Total, err
				}, 1},
				{"summary", func() (int, error) { s, err := r.Summary(); return s.Devices, err }, n},
			} {
				b.Run(c.name, func(b *testing.B) {
					for b.Loop() {
						got, err := c.run()
						if err != nil || got != c.want {
							b.Fatalf("got %d, %v, want %d", got, err, c.want)
						}
					}
				})
			}
		})
	}
}
