package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/outpost-edge/outpost/fleet/admin"
	"github.com/outpost-edge/outpost/fleet/analysis"
	"github.com/outpost-edge/outpost/fleet/export"
	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/fleet/rollout"
	"github.com/outpost-edge/outpost/internal/subcommand"
	"github.com/outpost-edge/outpost/models/bundle"
)

const defaultAdminURL = "http://" + admin.DefaultAddr

var (
	modelsPushCommand = subcommand.Command{Name: "models push",
		Summary: "sign a model version and store it in the running controller", Run: runModelsPush}
	modelsListCommand = subcommand.Command{Name: "models list",
		Summary: "list the model versions the controller holds", Run: runModelsList}
	devicesListCommand = subcommand.Command{Name: "devices list",
		Summary: "list devices with their models and update state", Run: runDevicesList}
	rolloutCreateCommand = subcommand.Command{Name: "rollout create",
		Summary: "start a rollout of a model version in waves", Run: runRolloutCreate}
	rolloutStatusCommand = subcommand.Command{Name: "rollout status",
		Summary: "show rollouts and their progress per wave", Run: runRolloutStatus}
	rolloutPauseCommand = subcommand.Command{Name: "rollout pause",
		Summary: "stop a rollout from starting new devices or waves", Run: rolloutAction("pause")}
	rolloutResumeCommand = subcommand.Command{Name: "rollout resume",
		Summary: "continue a paused rollout", Run: rolloutAction("resume")}
	rolloutAbortCommand = subcommand.Command{Name: "rollout abort",
		Summary: "end a rollout and roll its devices back", Run: rolloutAction("abort")}
)

// apiClient talks to the admin API.
type apiClient struct {
	base  string
	token string
	http  *http.Client
	// err, if set, is returned by every call: a token file or CA that
	// could not be read.
	err error
}

// adminFlags are the flags every client command shares.
type adminFlags struct {
	url, token, tokenFile, ca string
}

func adminFlag(fs *flag.FlagSet) *adminFlags {
	var a adminFlags
	fs.StringVar(&a.url, "admin", defaultAdminURL, "admin API URL of the controller (https:// when it serves TLS), or its host:port as serve --admin takes it (http)")
	fs.StringVar(&a.token, "token", "", "admin API token (default: $OUTPOST_TOKEN, then --token-file)")
	fs.StringVar(&a.tokenFile, "token-file", "", "file holding the admin API token")
	fs.StringVar(&a.ca, "ca", "", "PEM file of the CA that signed the admin API's certificate (default: $OUTPOST_CA, then the system's roots)")
	return &a
}

// client builds the API client: the token from --token, else
// $OUTPOST_TOKEN, else --token-file (none: no Authorization header, which
// only a controller in bootstrap mode accepts, from loopback); the CA from
// --ca, else $OUTPOST_CA.
func (a *adminFlags) client() *apiClient {
	base := strings.TrimRight(a.url, "/")
	if !strings.Contains(base, "://") {
		base = "http://" + base // host:port, as serve's --admin takes it
	}
	c := &apiClient{base: base, http: &http.Client{Timeout: 10 * time.Minute}}
	c.token = a.token
	if c.token == "" {
		c.token = os.Getenv("OUTPOST_TOKEN")
	}
	if c.token == "" && a.tokenFile != "" {
		b, err := os.ReadFile(a.tokenFile)
		if err != nil {
			c.err = fmt.Errorf("token file: %w", err)
			return c
		}
		c.token = strings.TrimSpace(string(b))
	}
	ca := a.ca
	if ca == "" {
		ca = os.Getenv("OUTPOST_CA")
	}
	if ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			c.err = fmt.Errorf("ca: %w", err)
			return c
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			c.err = fmt.Errorf("ca: %s holds no PEM certificate", ca)
			return c
		}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		c.http.Transport = tr
	}
	return c
}

// apiError is an error the API answered with.
type apiError struct {
	status int
	msg    string
}

func (e *apiError) Error() string { return fmt.Sprintf("admin api: %d: %s", e.status, e.msg) }

func (c *apiClient) do(ctx context.Context, method, path, ctype string, body io.Reader, out any) error {
	if c.err != nil {
		return c.err
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("admin api %s: %w (is outpost-fleet serve running?)", c.base, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		var e struct {
			Error string `json:"error"`
		}
		_ = json.Unmarshal(b, &e)
		if e.Error == "" {
			e.Error = strings.TrimSpace(string(b))
		}
		return &apiError{status: resp.StatusCode, msg: e.Error}
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

func (c *apiClient) json(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	ctype := ""
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body, ctype = bytes.NewReader(b), "application/json"
	}
	return c.do(ctx, method, path, ctype, body, out)
}

// runModelsPush signs like models export (the same fleet/export code writes
// a bundle to a temporary directory) and uploads the bundle's release.json
// and model.tflite to the admin API, which verifies both before storing them
// in its data directory. Pushing through the API rather than into the data
// directory keeps one writer of the registry, the running controller.
func runModelsPush(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("models push", stderr)
	api := adminFlag(fs)
	keys := fs.String("keys", "", "keys directory made by keys init (required)")
	name := fs.String("name", "", "model name (required)")
	ver := fs.Int64("version", 0, "model version, a positive integer (required)")
	expires := fs.Duration("expires", export.DefaultExpires, "how long the release may be installed")
	golden := fs.String("golden", "", "JSON file with golden test vectors to sign into the manifest")
	minAgent := fs.String("min-agent", "", "oldest agent version allowed to run the model")
	ref := addReferenceFlags(fs)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: outpost-fleet models push --keys KEYS --name N --version V [--reference PROFILE.json|INPUTS] [--admin URL] MODEL.tflite")
		fs.PrintDefaults()
	}
	pos, err := subcommand.ParseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || *keys == "" || *name == "" || *ver < 1 {
		fs.Usage()
		return subcommand.UsageError("--keys, --name, --version (positive) and one model file are required")
	}
	tmp, err := os.MkdirTemp("", "outpost-push-*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	reference, err := ref.load(ctx, pos[0], stderr)
	if err != nil {
		return err
	}
	opts := export.Options{Name: *name, Version: *ver, Model: pos[0], Out: filepath.Join(tmp, "bundle"), Expires: *expires, MinAgentVersion: *minAgent, Reference: reference}
	if _, err := exportBundle(*keys, *golden, opts); err != nil {
		return err
	}
	release, err := os.ReadFile(filepath.Join(opts.Out, bundle.ReleaseFile))
	if err != nil {
		return err
	}
	model, err := os.Open(filepath.Join(opts.Out, bundle.ModelFile))
	if err != nil {
		return err
	}
	defer model.Close()
	st, err := model.Stat()
	if err != nil {
		return err
	}
	var src io.Reader = model
	var bar *progress
	if isTerminal(stderr) {
		bar = &progress{w: stderr, label: fmt.Sprintf("uploading %s v%d", *name, *ver), total: st.Size()}
		src = io.TeeReader(model, bar)
	}
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	written := make(chan struct{})
	go func() {
		defer close(written)
		err := func() error {
			w, err := mw.CreateFormFile("release", bundle.ReleaseFile)
			if err == nil {
				_, err = w.Write(release)
			}
			if err == nil {
				w, err = mw.CreateFormFile("model", bundle.ModelFile)
			}
			if err == nil {
				_, err = io.Copy(w, src)
			}
			if err == nil {
				err = mw.Close()
			}
			return err
		}()
		pw.CloseWithError(err)
	}()
	var info admin.ModelInfo
	err = api.client().do(ctx, http.MethodPost, "/v1/models", mw.FormDataContentType(), pr, &info)
	pr.CloseWithError(errors.New("upload ended")) // unblocks the writer if the request ended early
	<-written
	bar.done()
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "pushed %s v%d sha256:%s %d bytes (release serial %d, expires %s)\n",
		info.Name, info.Version, info.SHA256, info.Length, info.Serial, info.Expires.Format(time.RFC3339))
	if reference != nil {
		fmt.Fprintf(stdout, "  reference: %d features from %d requests\n", len(reference.Features), reference.Requests)
	}
	return nil
}

func runModelsList(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("models list", stderr)
	api := adminFlag(fs)
	out := subcommand.OutputFlag(fs)
	if _, err := subcommand.ParseInterspersed(fs, args); err != nil {
		return err
	}
	if err := out.Check(); err != nil {
		return err
	}
	var ms []admin.ModelInfo
	if err := api.client().json(ctx, http.MethodGet, "/v1/models", nil, &ms); err != nil {
		return err
	}
	return out.Write(stdout, ms, func() error {
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tVERSION\tSHA256\tBYTES\tEXPIRES")
		for _, m := range ms {
			fmt.Fprintf(tw, "%s\t%d\t%.16s\t%d\t%s\n", m.Name, m.Version, m.SHA256, m.Length, m.Expires.Format(time.RFC3339))
		}
		return tw.Flush()
	})
}

func runDevicesList(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("devices list", stderr)
	api := adminFlag(fs)
	out := subcommand.OutputFlag(fs)
	if _, err := subcommand.ParseInterspersed(fs, args); err != nil {
		return err
	}
	if err := out.Check(); err != nil {
		return err
	}
	var ds []registry.Device
	if err := api.client().json(ctx, http.MethodGet, "/v1/devices", nil, &ds); err != nil {
		return err
	}
	if out.JSON() {
		return out.Write(stdout, ds, nil)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DEVICE\tONLINE\tAGENT\tMODELS\tUPDATE\tLABELS")
	for _, d := range ds {
		var models, labels []string
		for _, m := range d.Models {
			models = append(models, fmt.Sprintf("%s:v%d", m.Name, m.Version))
		}
		for k, v := range d.Labels {
			labels = append(labels, k+"="+v)
		}
		sort.Strings(labels)
		upd := "-"
		if d.Update != nil {
			upd = fmt.Sprintf("%s v%d %s", d.Update.Model, d.Update.Version, d.Update.State)
		}
		fmt.Fprintf(tw, "%s\t%v\t%s\t%s\t%s\t%s\n", d.ID, d.Online, d.AgentVersion, strings.Join(models, ","), upd, strings.Join(labels, ","))
	}
	return tw.Flush()
}

func runRolloutCreate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("rollout create", stderr)
	api := adminFlag(fs)
	name := fs.String("model", "", "model name (required)")
	ver := fs.Int64("version", 0, "model version (required)")
	selector := fs.String("selector", "", "device labels to match, k=v,k2=v2 (default: every device)")
	waves := fs.String("waves", "10,50,100", "cumulative percentages of the devices per wave, ending at 100")
	ratio := fs.Float64("max-failure-ratio", 0.1, "a wave with more failures than this share of its devices halts and rolls back")
	minOK := fs.Int("min-successes", 1, "commits a wave needs from its own devices before the next starts (a smaller wave needs all its devices)")
	bake := fs.Duration("bake", 0, "how long a finished wave is watched before the next starts")
	verified := fs.Bool("require-verified", false, "count only verified commits (probation saw its minimum requests) as successes")
	probMin := fs.Int64("probation-min-requests", 0, "requests the new version must serve in probation for a verified commit (default: the device's setting)")
	probMax := fs.Duration("probation-max", 0, "longest probation when the traffic does not come, whole seconds (default: the device's setting)")
	waveTimeout := fs.Duration("wave-timeout", 0, "how long a wave may wait for its evidence (default: forever)")
	onTimeout := fs.String("on-wave-timeout", "", "what a wave timeout does: halt (default) or continue")
	rate := fs.Int("rate", 0, "send installs to at most this many devices a minute (default: no limit)")
	rateFactor := fs.Float64("rate-factor", 0, "ramp: multiply the rate by this (more than 1, at most 10) every --rate-every successes")
	rateEvery := fs.Int("rate-every", 0, "ramp: successes between two increases of the rate")
	rateMax := fs.Int("rate-max", 0, "ramp: highest rate, devices a minute (default: no cap)")
	shadow := fs.String("shadow", "", "each wave first copies PERCENT% of its devices' requests to the candidate for DURATION (10%/15m), on devices that take trials")
	canary := fs.String("canary", "", "then has the candidate answer PERCENT% of the requests for DURATION (10%/15m)")
	analysisFile := fs.String("analysis", "", "analysis config (YAML) judging the phases and the waves (default with --shadow or --canary: the controller's)")
	if _, err := subcommand.ParseInterspersed(fs, args); err != nil {
		return err
	}
	var phases [2]*admin.PhaseRequest
	for i, f := range []struct{ name, v string }{{"shadow", *shadow}, {"canary", *canary}} {
		if f.v == "" {
			continue
		}
		p, err := parsePhase(f.name, f.v)
		if err != nil {
			return subcommand.UsageError(err.Error())
		}
		phases[i] = p
	}
	var cfg *analysis.Config
	if *analysisFile != "" {
		c, err := readAnalysis(*analysisFile)
		if err != nil {
			return fmt.Errorf("--analysis: %w", err)
		}
		cfg = c
	}
	if *onTimeout != "" && *waveTimeout <= 0 {
		return subcommand.UsageError("--on-wave-timeout needs --wave-timeout")
	}
	if *probMin < 0 || *probMax < 0 || *probMax%time.Second != 0 {
		return subcommand.UsageError("--probation-min-requests must be positive and --probation-max whole seconds")
	}
	if *name == "" || *ver < 1 {
		fs.Usage()
		return subcommand.UsageError("--model and --version (positive) are required")
	}
	sel, err := rollout.ParseSelector(*selector)
	if err != nil {
		return subcommand.UsageError(err.Error())
	}
	var ws []int
	for _, w := range strings.Split(*waves, ",") {
		var n int
		if _, err := fmt.Sscanf(strings.TrimSpace(w), "%d", &n); err != nil {
			return subcommand.UsageError(fmt.Sprintf("--waves %q: want percentages like 10,50,100", *waves))
		}
		ws = append(ws, n)
	}
	req := admin.RolloutRequest{Model: *name, Version: *ver, Selector: sel, Waves: ws, MaxFailureRatio: ratio, MinSuccesses: *minOK}
	if *bake > 0 {
		req.Bake = bake.String()
	}
	req.RequireVerified, req.ProbationMinRequests, req.OnWaveTimeout = *verified, *probMin, *onTimeout
	req.RatePerMinute, req.RateFactor, req.RateEvery, req.RateMax = *rate, *rateFactor, *rateEvery, *rateMax
	if *probMax > 0 {
		req.ProbationMax = probMax.String()
	}
	if *waveTimeout > 0 {
		req.WaveTimeout = waveTimeout.String()
	}
	req.Shadow, req.Canary, req.Analysis = phases[0], phases[1], cfg
	var rep rollout.Report
	if err := api.client().json(ctx, http.MethodPost, "/v1/rollouts", req, &rep); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "rollout %s: %s v%d, waves %v", rep.ID, rep.Model, rep.Version, rep.Rollout.Waves)
	if rep.WaveTimeout > 0 {
		fmt.Fprintf(stdout, ", wave timeout %s (%s)", rep.WaveTimeout, rep.OnWaveTimeout)
	}
	if rep.RequireVerified {
		fmt.Fprint(stdout, ", verified commits only")
	}
	if rep.Rollout.Rate.PerMinute > 0 {
		fmt.Fprint(stdout, ", "+rateText(rep.Rollout.Rate, rep.RateNow))
	}
	if p := phaseText(&rep); p != "" {
		fmt.Fprint(stdout, ", "+p)
	}
	fmt.Fprintln(stdout)
	return nil
}

// rateText shows a rollout's send rate: the current one and its ramp.
func rateText(r registry.Rate, now int) string {
	s := fmt.Sprintf("rate %d devices/min", now)
	if r.Factor > 1 {
		s += fmt.Sprintf(" (from %d, x%g every %d successes", r.PerMinute, r.Factor, r.Every)
		if r.Max > 0 {
			s += fmt.Sprintf(", up to %d", r.Max)
		}
		s += ")"
	}
	return s
}

var categories = []string{rollout.CatPending, rollout.CatDownloading, rollout.CatValidating, rollout.CatActive, rollout.CatFailed, rollout.CatRolledBack}

func printReports(w io.Writer, reps []rollout.Report) {
	if len(reps) == 0 {
		fmt.Fprintln(w, "no rollouts")
		return
	}
	for _, r := range reps {
		fmt.Fprintf(w, "%s  %s v%d  %s  wave %d/%d  committed %d of %d (%d verified)  moved %s", r.ID, r.Model, r.Version, r.State,
			r.Rollout.Wave+1, len(r.Rollout.Waves), r.Committed, r.Devices, r.Verified, humanBytes(r.BytesMoved))
		if r.Reason != "" {
			fmt.Fprintf(w, "  (%s)", r.Reason)
		}
		fmt.Fprintln(w)
		if r.Rollout.Rate.PerMinute > 0 {
			fmt.Fprintf(w, "  %s\n", rateText(r.Rollout.Rate, r.RateNow))
		}
		if p := phaseText(&r); p != "" {
			fmt.Fprintf(w, "  phases: %s\n", p)
		}
		if r.Waiting != "" {
			fmt.Fprintf(w, "  %s", r.Waiting)
			if !r.TimeoutAt.IsZero() {
				fmt.Fprintf(w, " (times out at %s: %s)", r.TimeoutAt.Format(time.RFC3339), r.OnWaveTimeout)
			}
			fmt.Fprintln(w)
		}
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprint(tw, "  WAVE\tGATE\tDEVICES")
		for _, c := range categories {
			fmt.Fprint(tw, "\t"+strings.ToUpper(c))
		}
		fmt.Fprint(tw, "\tVERIFIED\tUNVERIFIED\tOFFLINE\tSUCCESSES")
		phased := phaseText(&r) != ""
		if phased {
			fmt.Fprint(tw, "\tPHASE\tTRIAL DEVICES")
		}
		fmt.Fprintln(tw)
		for i, wv := range r.Waves {
			fmt.Fprintf(tw, "  %d (%d%%)\t%s\t%d", i+1, wv.Percent, wv.Gate, wv.Devices)
			for _, c := range categories {
				fmt.Fprintf(tw, "\t%d", wv.Counts[c])
			}
			fmt.Fprintf(tw, "\t%d\t%d\t%d\t%d/%d", wv.Verified, wv.Unverified, wv.Offline, wv.Successes, wv.Needed)
			if phased {
				ph := wv.Phase
				if ph == "" {
					ph = "-"
				}
				fmt.Fprintf(tw, "\t%s\t%d", ph, wv.TrialDevices)
			}
			fmt.Fprintln(tw)
		}
		tw.Flush()
		printAnalyses(w, r.Analyses)
		for _, d := range r.Decisions {
			if d.Detail != "" {
				fmt.Fprintf(w, "  %s wave %d %s: %s\n", d.Time.Format(time.RFC3339), d.Wave+1, d.Action, d.Detail)
			}
		}
	}
}

func rolloutAction(action string) func(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return func(ctx context.Context, args []string, stdout, stderr io.Writer) error {
		fs := newFlagSet("rollout "+action, stderr)
		api := adminFlag(fs)
		reason := fs.String("reason", "", "why (abort only; recorded and sent to devices)")
		pos, err := subcommand.ParseInterspersed(fs, args)
		if err != nil {
			return err
		}
		if len(pos) != 1 {
			fs.Usage()
			return subcommand.UsageError("one rollout id is required")
		}
		var body any
		if action == "abort" && *reason != "" {
			body = map[string]string{"reason": *reason}
		}
		var rep rollout.Report
		if err := api.client().json(ctx, http.MethodPost, "/v1/rollouts/"+pos[0]+"/"+action, body, &rep); err != nil {
			var ae *apiError
			if errors.As(err, &ae) && ae.status == http.StatusNotFound {
				return fmt.Errorf("no rollout %s", pos[0])
			}
			return err
		}
		fmt.Fprintf(stdout, "rollout %s is %s\n", rep.ID, rep.State)
		return nil
	}
}
