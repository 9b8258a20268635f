package controller_test

import (
	"bytes"
	"encoding/json"
	"io"
	"mime/multipart"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/fleet/admin"
	"github.com/outpost-edge/outpost/fleet/controller"
	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/fleet/rollout"
	"github.com/outpost-edge/outpost/fleet/simdevice"
	"github.com/outpost-edge/outpost/internal/testbroker"
	"github.com/outpost-edge/outpost/protocol"
)

func multipartBody(t *testing.T, parts ...[2][]byte) (string, *bytes.Buffer) {
	t.Helper()
	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	for _, p := range parts {
		w, err := mw.CreateFormFile(string(p[0]), string(p[0]))
		if err != nil {
			t.Fatal(err)
		}
		w.Write(p[1])
	}
	mw.Close()
	return mw.FormDataContentType(), &b
}

// TestAdminAPI exercises every admin endpoint over real HTTP, with the
// status codes of its errors.
func TestAdminAPI(t *testing.T) {
	f := startFleet(t, controller.Options{})
	base := "http://" + f.c.AdminAddr()
	call := func(method, path, ctype string, body io.Reader, wantStatus int, out any) {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, body)
		if ctype != "" {
			req.Header.Set("Content-Type", ctype)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != wantStatus {
			t.Fatalf("%s %s: got %d, want %d: %s", method, path, resp.StatusCode, wantStatus, b)
		}
		if resp.StatusCode >= 400 {
			var e map[string]string
			if json.Unmarshal(b, &e) != nil || e["error"] == "" {
				t.Fatalf("%s %s: error body %q is not {\"error\": ...}", method, path, b)
			}
		}
		if out != nil {
			if err := json.Unmarshal(b, out); err != nil {
				t.Fatalf("%s %s: %v: %s", method, path, err, b)
			}
		}
	}
	call("GET", "/v1/health", "", nil, 200, nil)

	model, rel := f.artifact("face", 1, 10000)
	ct, body := multipartBody(t, [2][]byte{[]byte("release"), rel}, [2][]byte{[]byte("model"), model})
	var mi admin.ModelInfo
	call("POST", "/v1/models", ct, body, 201, &mi)
	if mi.Name != "face" || mi.Version != 1 || mi.Length != 10000 || mi.ChunkSize != registry.DefaultChunkSize {
		t.Fatalf("pushed %+v", mi)
	}
	// Refused pushes: bytes that are not the signed ones, a forged release,
	// the parts in the wrong order, not multipart.
	_, rel2 := f.artifact("face", 2, 100)
	ct, body = multipartBody(t, [2][]byte{[]byte("release"), rel2}, [2][]byte{[]byte("model"), model[:100]})
	call("POST", "/v1/models", ct, body, 400, nil)
	other := startFleet(t, controller.Options{})
	_, forged := other.artifact("face", 3, 100)
	ct, body = multipartBody(t, [2][]byte{[]byte("release"), forged}, [2][]byte{[]byte("model"), model[:100]})
	call("POST", "/v1/models", ct, body, 400, nil)
	ct, body = multipartBody(t, [2][]byte{[]byte("model"), model}, [2][]byte{[]byte("release"), rel})
	call("POST", "/v1/models", ct, body, 400, nil)
	call("POST", "/v1/models", "application/json", strings.NewReader("{}"), 400, nil)

	var ms []admin.ModelInfo
	call("GET", "/v1/models", "", nil, 200, &ms)
	if len(ms) != 1 || ms[0].SHA256 != mi.SHA256 {
		t.Fatalf("models %+v", ms)
	}
	var ds []registry.Device
	call("GET", "/v1/devices", "", nil, 200, &ds)
	if len(ds) != 0 {
		t.Fatalf("devices %+v before any connected", ds)
	}
	call("GET", "/v1/devices/gw-9", "", nil, 404, nil)

	call("POST", "/v1/rollouts", "application/json", strings.NewReader(`{"model":"face","version":1,"bogus":1}`), 400, nil)
	call("POST", "/v1/rollouts", "application/json", strings.NewReader(`{"model":"face","version":7}`), 400, nil)
	call("POST", "/v1/rollouts", "application/json", strings.NewReader(`{"model":"face","version":1,"bake":"soon"}`), 400, nil)
	call("POST", "/v1/rollouts", "application/json", strings.NewReader(`{"model":"face","version":1,"waves":[50]}`), 400, nil)
	call("POST", "/v1/rollouts", "application/json", strings.NewReader(`{"model":"face","version":1,"rate_factor":2,"rate_every":5}`), 400, nil)
	var rep rollout.Report
	call("POST", "/v1/rollouts", "application/json", strings.NewReader(`{"model":"face","version":1,"waves":[20,100],"max_failure_ratio":0.2,"bake":"1m","selector":{"site":"north"},"rate_per_minute":30}`), 201, &rep)
	if rep.State != registry.RolloutRunning || rep.MaxFailureRatio != 0.2 || rep.Bake != time.Minute || rep.Selector["site"] != "north" || len(rep.Waves) != 2 ||
		rep.Rollout.Rate.PerMinute != 30 || rep.RateNow != 30 {
		t.Fatalf("created %+v", rep)
	}
	call("GET", "/v1/rollouts/"+rep.ID, "", nil, 200, &rep)
	call("GET", "/v1/rollouts/r-missing", "", nil, 404, nil)
	var as []registry.Assignment
	call("GET", "/v1/rollouts/"+rep.ID+"/devices", "", nil, 200, &as)
	call("POST", "/v1/rollouts/"+rep.ID+"/pause", "", nil, 200, &rep)
	if rep.State != registry.RolloutPaused {
		t.Fatalf("after pause: %s", rep.State)
	}
	call("POST", "/v1/rollouts/"+rep.ID+"/pause", "", nil, 409, nil)
	call("POST", "/v1/rollouts/"+rep.ID+"/resume", "", nil, 200, &rep)
	call("POST", "/v1/rollouts/"+rep.ID+"/explode", "", nil, 404, nil)
	call("POST", "/v1/rollouts/"+rep.ID+"/abort", "application/json", strings.NewReader(`{"reason":"test"}`), 200, &rep)
	if rep.State != registry.RolloutAborted || rep.Reason != "test" {
		t.Fatalf("after abort: %+v", rep)
	}
	call("POST", "/v1/rollouts/"+rep.ID+"/resume", "", nil, 409, nil)
	var reps []rollout.Report
	call("GET", "/v1/rollouts", "", nil, 200, &reps)
	if len(reps) != 1 {
		t.Fatalf("rollouts %+v", reps)
	}
	var st controller.Stats
	call("GET", "/v1/stats", "", nil, 200, &st)
	if st.HeapBytes == 0 || st.Goroutines == 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestRolloutThroughMosquitto: the controller and devices on a real
// Mosquitto, with a validation failure that is stopped and rolled back.
func TestRolloutThroughMosquitto(t *testing.T) {
	url := testbroker.StartMosquitto(t, "").URL()
	f := startFleet(t, controller.Options{Broker: url})
	f.push("face", 1, 100<<10, 16<<10)
	f.push("face", 2, 100<<10, 16<<10)
	const n = 4
	ds := f.devices(n, url, func(i int, o *simdevice.Options) {
		o.FailValidation = func(m string, v int64) bool { return v == 2 && i == 0 }
	})
	f.waitDevices(n)
	ro, err := f.c.Engine().Create(rollout.Spec{Model: "face", Version: 1, Waves: []int{50, 100}})
	if err != nil {
		t.Fatal(err)
	}
	f.waitRollout(ro.ID, registry.RolloutCompleted, 90*time.Second)
	if got, off := running(ds, n, "face", 1); got != n {
		t.Fatalf("%d of %d on v1; not: %s", got, n, off)
	}
	ro2, err := f.c.Engine().Create(rollout.Spec{Model: "face", Version: 2, Waves: []int{100}, MaxFailureRatio: 0})
	if err != nil {
		t.Fatal(err)
	}
	f.waitRollout(ro2.ID, registry.RolloutHalted, 90*time.Second)
	eventually(t, 60*time.Second, "all back on v1", func() (bool, string) {
		got, off := running(ds, n, "face", 1)
		return got == n, off
	})
	d, err := f.c.Registry().Device(devName(0))
	if err != nil || d.Update == nil || d.Update.State != protocol.UpdateFailed {
		t.Fatalf("device 0 status in the registry: %+v, %v", d.Update, err)
	}
}
