package console_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/outpost-edge/outpost/fleet/admin"
	"github.com/outpost-edge/outpost/fleet/controller"
	"github.com/outpost-edge/outpost/fleet/keyring"
	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/fleet/simdevice"
	"github.com/outpost-edge/outpost/models/manifest"
	"github.com/outpost-edge/outpost/protocol"
)

const (
	fleetName = "console"
	model     = "detector"
	nDevices  = 6
)

// chromium finds the browser, or skips the test (fails it under CI, whose
// setup installs chromium).
func chromium(t *testing.T) string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("chromium is not installed (make setup installs it)")
	}
	t.Skip("chromium is not installed: make setup (Debian package chromium) installs it")
	return ""
}

// artifacts is where screenshots go: $OUTPOST_ARTIFACTS/console, or a
// temporary directory that the test names in its log.
func artifacts(t *testing.T) string {
	dir := t.TempDir()
	if a := os.Getenv("OUTPOST_ARTIFACTS"); a != "" {
		dir = filepath.Join(a, "console")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("screenshots in %s", dir)
	return dir
}

// unlabelled lists, in the page, the form fields without a label, the
// links and buttons without a name, and the charts without a text
// alternative: "" when there are none.
const unlabelled = `(() => {
  const bad = [];
  for (const el of document.querySelectorAll('input, select, textarea')) {
    if (el.type !== 'hidden' && !(el.labels && el.labels.length) && !el.getAttribute('aria-label')) bad.push('field ' + (el.id || el.name));
  }
  for (const el of document.querySelectorAll('button, a[href]')) {
    if (!el.textContent.trim() && !el.getAttribute('aria-label')) bad.push('control ' + el.outerHTML.slice(0, 60));
  }
  for (const el of document.querySelectorAll('svg.chart')) {
    if (el.getAttribute('role') !== 'img' || !el.getAttribute('aria-label')) bad.push('chart ' + el.textContent.slice(0, 40));
  }
  for (const el of document.querySelectorAll('table')) {
    if (!el.querySelector('th')) bad.push('table without headers');
  }
  return bad.join('; ');
})()`

// consoleLog collects what the page logged that counts as an error.
type consoleLog struct {
	// missing, if set, matches more URLs whose 404 is expected (a page
	// for something that does not exist).
	missing *regexp.Regexp
	mu      sync.Mutex // guards errs
	errs    []string
}

// optionalAPI is the endpoint that answers 404 for a model without a
// drift state (no reference profile, or no window judged yet): the console
// shows an empty state then, and the browser logs the 404 as a failed
// resource.
var optionalAPI = regexp.MustCompile(`/v1/models/[^/]+/drift\b`)

func (c *consoleLog) listen(ev any) {
	var msg string
	switch ev := ev.(type) {
	case *runtime.EventConsoleAPICalled:
		if ev.Type != runtime.ConsoleAPICalledTypeError && ev.Type != runtime.ConsoleAPICalledTypeAssert && ev.Type != runtime.ConsoleAPICalledTypeWarning {
			return
		}
		var parts []string
		for _, a := range ev.Args {
			if len(a.Value) > 0 {
				parts = append(parts, string(a.Value))
			} else {
				parts = append(parts, a.Description)
			}
		}
		msg = fmt.Sprintf("console.%s: %s", ev.Type, strings.Join(parts, " "))
	case *runtime.EventExceptionThrown:
		d := ev.ExceptionDetails
		msg = "exception: " + d.Text
		if d.Exception != nil {
			msg += " " + d.Exception.Description
		}
	case *log.EventEntryAdded:
		e := ev.Entry
		if e.Level != log.EntryLevelError && e.Level != log.EntryLevelWarning {
			return
		}
		if e.Source == log.EntrySourceNetwork && strings.Contains(e.Text, "404") &&
			(optionalAPI.MatchString(e.URL) || c.missing != nil && c.missing.MatchString(e.URL)) {
			return
		}
		msg = fmt.Sprintf("log %s/%s: %s %s", e.Source, e.Level, e.Text, e.URL)
	default:
		return
	}
	c.mu.Lock()
	c.errs = append(c.errs, msg)
	c.mu.Unlock()
}

func (c *consoleLog) errors() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.errs...)
}

// TestConsoleInBrowser drives the console in a real headless Chromium
// against a real controller with simulated devices: a bootstrap login
// without a token, then an operator logs in,
// finds a device by search, opens it, starts a rollout from the model page
// and watches it complete (and appear in the device's update history),
// starts another, pauses, resumes and aborts it; a viewer sees no
// mutating control and the API refuses the viewer's POST with 403. The
// page logs no error all along, and works at phone width. Screenshots at
// 1280x800 and 390x844 go to artifacts().
func TestConsoleInBrowser(t *testing.T) {
	browser := chromium(t)
	shots := artifacts(t)

	// A controller with six simulated devices serving detector v1, and
	// versions 2 and 3 pushed.
	f := startController(t, controller.Options{})
	c := f.c
	v1 := f.pushVersions(t, 3)
	for i := range nDevices {
		f.device(t, simdevice.Options{Device: fmt.Sprintf("gw-%03d", i),
			Labels: map[string]string{"site": []string{"north", "south"}[i%2]}, RetryAfter: time.Second,
			Models: []protocol.ModelStatus{{Name: model, Version: 1, Digest: v1}}})
	}
	base := "http://" + c.AdminAddr()
	api := func(token, method, path, body string, want int, out any) {
		t.Helper()
		f.call(t, token, method, path, body, want, out)
	}
	waitFor(t, 60*time.Second, "devices online", func() bool {
		s, err := c.Registry().Summary()
		return err == nil && s.Online == nDevices && len(s.Versions) == 1 && s.Versions[0].Devices == nDevices
	})

	// The browser: one tab at 1280x800.
	actx, acancel := chromedp.NewExecAllocator(context.Background(), append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(browser), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.WindowSize(1280, 800))...)
	defer acancel()
	bctx, bcancel := chromedp.NewContext(actx)
	defer bcancel()
	if err := chromedp.Do(bctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatal(err)
	}
	var logged consoleLog
	if err := chromedp.Listen(bctx, logged.listen); err != nil {
		t.Fatal(err)
	}
	tctx, tcancel := context.WithTimeout(bctx, 90*time.Second)
	defer tcancel()
	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(tctx, steps...); err != nil {
			t.Fatalf("%s: %v (page errors: %q)", what, err, logged.errors())
		}
	}
	// until waits (by polling in the page) for a JavaScript condition.
	until := func(what, cond string) {
		t.Helper()
		if _, err := chromedp.Run(tctx, chromedp.Poll[bool](cond, chromedp.WithPollingInterval(100*time.Millisecond), chromedp.WithPollingTimeout(0))); err != nil {
			t.Fatalf("waiting for %s (%s): %v (page errors: %q)", what, cond, err, logged.errors())
		}
	}
	eval := func(expr string) string {
		t.Helper()
		v, err := chromedp.Run(tctx, chromedp.Evaluate[string](expr))
		if err != nil {
			t.Fatalf("%s: %v", expr, err)
		}
		return v
	}
	shot := func(name string) {
		t.Helper()
		b, err := chromedp.Run(tctx, chromedp.CaptureScreenshot())
		if err != nil {
			t.Fatalf("screenshot %s: %v", name, err)
		}
		if err := os.WriteFile(filepath.Join(shots, name+".png"), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	labelled := func(page string) {
		t.Helper()
		if bad := eval(unlabelled); bad != "" {
			t.Errorf("%s: %s", page, bad)
		}
	}
	login := func(token string) {
		t.Helper()
		do("log in",
			chromedp.WaitVisible(chromedp.CSS("#token")),
			chromedp.SendKeys(chromedp.CSS("#token"), token),
			chromedp.Click(chromedp.CSS("#login")))
		until("the overview", `document.getElementById('online-count') !== null`)
	}

	// Bootstrap mode (no token exists, the browser on loopback): an empty
	// token logs in as local.
	do("open", chromedp.Navigate(base+"/console/"), chromedp.WaitVisible(chromedp.CSS("#token")), chromedp.Click(chromedp.CSS("#login")))
	until("the bootstrap overview", `document.getElementById('online-count') !== null`)
	if got := eval(`document.getElementById('who-name').textContent`); !strings.Contains(got, "bootstrap") || !strings.Contains(got, "admin") {
		t.Errorf("who in bootstrap mode: got %q", got)
	}
	do("log out of bootstrap", chromedp.Click(chromedp.CSS("#logout")), chromedp.WaitVisible(chromedp.CSS("#token")))
	var root, operator, viewer admin.NewToken
	api("", "POST", "/v1/tokens", `{"role":"admin","name":"root"}`, 201, &root)
	api(root.Token, "POST", "/v1/tokens", `{"role":"operator","name":"olga"}`, 201, &operator)
	api(root.Token, "POST", "/v1/tokens", `{"role":"viewer","name":"victor"}`, 201, &viewer)

	// / leads to the console.
	do("open", chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.CSS("#token")))
	if loc := eval(`location.pathname`); loc != "/console/" {
		t.Fatalf("/ led to %s, want /console/", loc)
	}
	// Keyboard: the token field has the focus, Tab moves to the button.
	if got := eval(`document.activeElement.id`); got != "token" {
		t.Errorf("focus on the login page: got %q, want the token field", got)
	}
	do("tab", chromedp.KeyEvent("\t"))
	if got := eval(`document.activeElement.id`); got != "login" {
		t.Errorf("Tab from the token field focused %q, want the login button", got)
	}
	labelled("login")
	shot("login-1280")

	login(operator.Token)
	until("the overview counts", fmt.Sprintf(`document.getElementById('online-count').textContent.startsWith('%d')`, nDevices))
	if got := eval(`document.getElementById('who-name').textContent`); !strings.Contains(got, "olga") || !strings.Contains(got, "operator") {
		t.Errorf("who: got %q, want olga and operator", got)
	}
	labelled("overview")
	shot("overview-1280")

	// Find a device by search and open it.
	do("devices", chromedp.Click(chromedp.CSS(`a[data-nav="devices"]`)), chromedp.WaitVisible(chromedp.CSS("#device-q")))
	until("the first page", `document.querySelectorAll('a.device-link').length === 6`)
	do("search", chromedp.SendKeys(chromedp.CSS("#device-q"), "gw-004"))
	until("one result", `document.querySelectorAll('a.device-link').length === 1 && document.querySelector('a.device-link').textContent === 'gw-004'`)
	if got := eval(`document.getElementById('device-count').textContent`); !strings.Contains(got, "of 1") {
		t.Errorf("count: got %q, want … of 1", got)
	}
	labelled("devices")
	shot("devices-search-1280")
	do("open the device", chromedp.Click(chromedp.CSS("a.device-link")))
	until("the device page", `document.querySelector('h1') && document.querySelector('h1').textContent.startsWith('gw-004')`)
	until("its sections", `!document.querySelector('main').textContent.includes('Loading…')`)
	if got := eval(`document.querySelector('main').textContent`); !strings.Contains(got, model) || !strings.Contains(got, "site=north") {
		t.Errorf("device page lacks the model or the labels: %.300s", got)
	}
	labelled("device")
	shot("device-1280")

	// Start a rollout of v2 from the model page and watch it complete.
	startRollout := func(version, waves, bake string) string {
		t.Helper()
		do("model page", chromedp.Navigate(base+"/console/#/models/"+model), chromedp.WaitVisible(chromedp.CSS("#start-rollout-panel summary")))
		do("start form", chromedp.Click(chromedp.CSS("#start-rollout-panel summary")), chromedp.WaitVisible(chromedp.CSS("#ro-version")))
		labelled("model with the start form")
		eval(fmt.Sprintf(`document.getElementById('ro-version').value = %q; ''`, version))
		do("fill the form", chromedp.Clear(chromedp.CSS("#ro-waves")), chromedp.SendKeys(chromedp.CSS("#ro-waves"), waves),
			chromedp.SendKeys(chromedp.CSS("#ro-bake"), bake), chromedp.Click(chromedp.CSS("#ro-start")))
		until("the rollout page", `location.hash.startsWith('#/rollouts/') && document.getElementById('rollout-state') !== null`)
		return strings.TrimPrefix(eval(`decodeURIComponent(location.hash)`), "#/rollouts/")
	}
	first := startRollout("2", "50, 100", "")
	labelled("rollout")
	shot("rollout-running-1280")
	until("the rollout completed", `document.getElementById('rollout-state').textContent === 'completed'`)
	until("its devices", `document.querySelectorAll('#main table').length >= 2 && !document.querySelector('#rollout-actions button')`)
	ro, err := c.Registry().Rollout(first)
	if err != nil || ro.State != registry.RolloutCompleted || ro.Version != 2 || len(ro.Waves) != 2 {
		t.Fatalf("rollout %s: %+v, %v; want completed v2 in 2 waves", first, ro, err)
	}
	shot("rollout-completed-1280")
	// The device's update history now holds the rollout.
	do("device history", chromedp.Navigate(base+"/console/#/devices/gw-004"))
	until("the update history", fmt.Sprintf(`document.querySelector('table[aria-label="Update history"] a[href="#/rollouts/%s"]') !== null`, first))
	do("model page", chromedp.Navigate(base+"/console/#/models/"+model))
	until("the metrics section", `document.getElementById('h-metrics') !== null && !document.querySelector('main').textContent.includes('Loading…')`)
	shot("model-1280")

	// Start another (it bakes an hour after its first wave) and abort it.
	second := startRollout("3", "50, 100", "1h")
	do("pause", chromedp.WaitVisible(chromedp.CSS("#pause")), chromedp.Click(chromedp.CSS("#pause")))
	until("the rollout paused", `document.getElementById('rollout-state').textContent === 'paused' && document.getElementById('resume') !== null`)
	if n := eval(`String(document.querySelectorAll('#pause').length)`); n != "0" {
		t.Errorf("a paused rollout still offers Pause")
	}
	do("resume", chromedp.Click(chromedp.CSS("#resume")))
	until("the rollout running again", `document.getElementById('rollout-state').textContent === 'running' && document.getElementById('pause') !== null`)
	do("abort", chromedp.WaitVisible(chromedp.CSS("#abort")), chromedp.Click(chromedp.CSS("#abort")),
		chromedp.WaitVisible(chromedp.CSS("#abort-reason")), chromedp.SendKeys(chromedp.CSS("#abort-reason"), "console test"),
		chromedp.Click(chromedp.CSS("#abort-confirm")))
	until("the rollout aborted", `document.getElementById('rollout-state').textContent === 'aborted'`)
	if ro, err := c.Registry().Rollout(second); err != nil || ro.State != registry.RolloutAborted || !strings.Contains(ro.Reason, "console test") {
		t.Fatalf("rollout %s: %+v, %v; want aborted with the reason given", second, ro, err)
	}

	// Phone width: the pages fit without sideways scrolling.
	do("phone", chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2)))
	for _, p := range []struct{ name, hash, ready string }{
		{"overview", "#/", `document.getElementById('online-count') !== null`},
		{"devices", "#/devices", `document.querySelectorAll('a.device-link').length === 6`},
		{"rollout", "#/rollouts/" + first, `document.getElementById('rollout-state') !== null && document.querySelectorAll('#main table').length >= 2`},
		{"device", "#/devices/gw-004", `document.querySelector('table[aria-label="Update history"]') !== null`},
		{"model", "#/models/" + model, `document.getElementById('start-rollout-panel') !== null && !document.querySelector('main').textContent.includes('Loading…')`},
	} {
		do(p.name, chromedp.Navigate(base+"/console/"+p.hash))
		until(p.name+" at phone width", p.ready)
		if w := eval(`String(document.documentElement.scrollWidth - window.innerWidth)`); w != "0" {
			t.Errorf("%s at 390 px wide scrolls sideways by %s px", p.name, w)
		}
		shot(p.name + "-390")
	}
	do("desktop", chromedp.EmulateViewport(1280, 800))

	// A viewer: a running rollout shows no button, the model page no form,
	// and the API refuses the viewer's POSTs.
	var third rolloutRep
	api(operator.Token, "POST", "/v1/rollouts", `{"model":"detector","version":3,"waves":[50,100],"bake":"1h"}`, 201, &third)
	do("log out", chromedp.Navigate(base+"/console/#/"), chromedp.WaitVisible(chromedp.CSS("#logout")), chromedp.Click(chromedp.CSS("#logout")))
	login(viewer.Token)
	do("rollout as viewer", chromedp.Navigate(base+"/console/#/rollouts/"+third.ID))
	until("the running rollout", `document.getElementById('rollout-state') !== null && document.getElementById('rollout-state').textContent === 'running'`)
	mutating := `document.querySelectorAll('#pause, #resume, #abort, #abort-confirm, #ro-start, #start-rollout-panel').length`
	if n := eval(`String(` + mutating + `)`); n != "0" {
		t.Errorf("viewer sees %s mutating controls on a running rollout", n)
	}
	shot("rollout-viewer-1280")
	do("model as viewer", chromedp.Navigate(base+"/console/#/models/"+model))
	until("the model page", `document.getElementById('h-metrics') !== null`)
	if n := eval(`String(` + mutating + `)`); n != "0" {
		t.Errorf("viewer sees %s mutating controls on the model page", n)
	}
	api(viewer.Token, "POST", "/v1/rollouts/"+third.ID+"/abort", `{"reason":"viewer"}`, 403, nil)
	api(viewer.Token, "POST", "/v1/rollouts", `{"model":"detector","version":2}`, 403, nil)
	if ro, err := c.Registry().Rollout(third.ID); err != nil || ro.State != registry.RolloutRunning {
		t.Fatalf("rollout %s after the viewer's POSTs: %+v, %v; want running", third.ID, ro, err)
	}

	// The overview as the viewer finds it: one rollout running, two
	// versions served (docs/images/console-overview.png).
	do("overview as viewer", chromedp.Navigate(base+"/console/#/"))
	until("the active rollout", `document.querySelectorAll('#main a[href^="#/rollouts/"]').length === 1`)
	shot("overview-viewer-1280")

	if errs := logged.errors(); len(errs) > 0 {
		t.Errorf("the page logged errors:\n%s", strings.Join(errs, "\n"))
	}
}

// consoleFleet is a real controller (embedded broker and store) and the
// simulated devices a test runs on it, all stopped when the test ends.
type consoleFleet struct {
	c   *controller.Controller
	k   *keyring.Keyring
	ctx context.Context
	wg  sync.WaitGroup
}

// startController runs a controller with its own keys, the admin API and
// broker on loopback ports, until the test ends; o gives the rest of its
// options (drift windows, analysis cadence).
func startController(t *testing.T, o controller.Options) *consoleFleet {
	t.Helper()
	keys := filepath.Join(t.TempDir(), "keys")
	k, err := keyring.Init(keys, keyring.Options{})
	if err != nil {
		t.Fatal(err)
	}
	o.Fleet, o.DataDir, o.Keys, o.ListenMQTT, o.Admin, o.Tick = fleetName, t.TempDir(), keys, "127.0.0.1:0", "127.0.0.1:0", 100*time.Millisecond
	c, err := controller.New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	f := &consoleFleet{c: c, k: k, ctx: ctx}
	var runErr error
	f.wg.Go(func() { runErr = c.Run(ctx) })
	t.Cleanup(func() {
		cancel()
		f.wg.Wait()
		if runErr != nil && !errors.Is(runErr, context.Canceled) {
			t.Errorf("controller: %v", runErr)
		}
	})
	select {
	case <-c.Ready():
	case <-time.After(30 * time.Second):
		t.Fatal("controller not ready")
	}
	return f
}

// push signs m and stores it with its bytes b.
func (f *consoleFleet) push(t *testing.T, m manifest.Manifest, b []byte) {
	t.Helper()
	rel, err := f.k.SignRelease(m, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.c.Registry().PutModel(f.k.Root(), rel, bytes.NewReader(b), 4<<10, time.Now()); err != nil {
		t.Fatal(err)
	}
}

// call sends method path with body (JSON) to the admin API with token
// (none when empty), fails the test unless the answer has status want,
// and decodes it into out when out is not nil.
func (f *consoleFleet) call(t *testing.T, token, method, path, body string, want int, out any) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+f.c.AdminAddr()+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		t.Fatalf("%s %s: got %d, want %d: %s", method, path, resp.StatusCode, want, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
	}
}

// pushVersions pushes versions 1 to n of model, random bytes each, and
// returns v1's digest (what its devices report serving).
func (f *consoleFleet) pushVersions(t *testing.T, n int64) (v1 string) {
	t.Helper()
	for v := int64(1); v <= n; v++ {
		b := make([]byte, 8<<10)
		_, _ = rand.Read(b)
		sum := sha256.Sum256(b)
		m := manifest.Manifest{Name: model, Version: v, SHA256: hex.EncodeToString(sum[:]), Length: int64(len(b)), Runtime: manifest.RuntimeTFLite,
			Inputs:  []manifest.Tensor{{Name: "in", DataType: "FP32", Shape: []int{1, 4}}},
			Outputs: []manifest.Tensor{{Name: "out", DataType: "FP32", Shape: []int{1, 2}}}}
		f.push(t, m, b)
		if v == 1 {
			v1 = "sha256:" + m.SHA256
		}
	}
	return v1
}

// device runs a simulated device on the controller's broker (o's broker,
// fleet and root are the controller's).
func (f *consoleFleet) device(t *testing.T, o simdevice.Options) {
	t.Helper()
	o.Broker, o.Fleet, o.Root = f.c.BrokerURL(), fleetName, f.k.Root()
	a, err := simdevice.New(o)
	if err != nil {
		t.Fatal(err)
	}
	f.wg.Go(func() {
		if err := a.Run(f.ctx); err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("device %s: %v", o.Device, err)
		}
	})
}

// tab is a headless Chromium tab at 1280x800 whose page errors are
// collected, with the steps the tests take in it; every step fails the
// test, naming what it was for, when it fails or the budget runs out.
type tab struct {
	t      *testing.T
	ctx    context.Context
	logged *consoleLog
	shots  string
}

// openTab starts the browser; every step must end within budget.
func openTab(t *testing.T, budget time.Duration, logged *consoleLog) *tab {
	t.Helper()
	browser, shots := chromium(t), artifacts(t)
	actx, acancel := chromedp.NewExecAllocator(context.Background(), append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(browser), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.WindowSize(1280, 800))...)
	t.Cleanup(acancel)
	bctx, bcancel := chromedp.NewContext(actx)
	t.Cleanup(bcancel)
	if err := chromedp.Do(bctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Listen(bctx, logged.listen); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(bctx, budget)
	t.Cleanup(cancel)
	return &tab{t: t, ctx: ctx, logged: logged, shots: shots}
}

func (b *tab) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	if err := chromedp.Do(b.ctx, steps...); err != nil {
		b.t.Fatalf("%s: %v (page errors: %q)", what, err, b.logged.errors())
	}
}

// until waits, polling in the page, for the JavaScript condition cond.
func (b *tab) until(what, cond string) {
	b.t.Helper()
	if _, err := chromedp.Run(b.ctx, chromedp.Poll[bool](cond, chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(0))); err != nil {
		page, _ := chromedp.Run(context.WithoutCancel(b.ctx), chromedp.Evaluate[string](`location.href + ' ' + document.body.textContent`))
		b.t.Fatalf("waiting for %s (%s): %v (page errors: %q; page %q)", what, cond, err, b.logged.errors(), page)
	}
}

func (b *tab) eval(expr string) string {
	b.t.Helper()
	v, err := chromedp.Run(b.ctx, chromedp.Evaluate[string](expr))
	if err != nil {
		b.t.Fatalf("%s: %v", expr, err)
	}
	return v
}

// shot captures the element sel into the artifacts as name.png.
func (b *tab) shot(name, sel string) {
	b.t.Helper()
	png, err := chromedp.Run(b.ctx, chromedp.Screenshot(chromedp.CSS(sel)))
	if err == nil {
		err = os.WriteFile(filepath.Join(b.shots, name+".png"), png, 0o644)
	}
	if err != nil {
		b.t.Fatal(err)
	}
}

type rolloutRep struct {
	ID string `json:"id"`
}

// waitFor polls cond until it holds or wait runs out.
func waitFor(t *testing.T, wait time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", wait, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
