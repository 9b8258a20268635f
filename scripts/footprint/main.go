// Command footprint measures what the agent costs on a device: binary size,
// time from exec to a 200 from /v2/health/ready, resident memory idle and
// while serving a model. `make footprint` builds the agent and runs it.
//
//	footprint -agent bin/outpost-agent -model face_detection_short_range.tflite
//
// The agent's own share is separated from the model's by also starting it
// with no model: idle RSS with the model minus idle RSS without it is the
// model's (file, arenas of every worker, XNNPACK packed weights). Figures are
// medians over -runs starts. Read them on real hardware, never under qemu.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() {
	agent := flag.String("agent", "bin/outpost-agent", "agent binary")
	model := flag.String("model", ".deps/models/face_detection_short_range.tflite", "model to serve")
	runs := flag.Int("runs", 5, "starts to take the median over")
	requests := flag.Int("requests", 200, "inference requests while serving")
	clients := flag.Int("clients", 2, "concurrent clients while serving")
	flag.Parse()
	// The agent resolves relative model paths against its data dir.
	if abs, err := filepath.Abs(*model); err == nil {
		*model = abs
	}
	if err := run(*agent, *model, *runs, *requests, *clients); err != nil {
		fmt.Fprintln(os.Stderr, "footprint:", err)
		os.Exit(1)
	}
}

// sample is one start of the agent.
type sample struct {
	ready      time.Duration
	idleKB     int // VmRSS once ready and settled
	servingKB  int // VmRSS after the requests
	peakKB     int // VmHWM at the end
	noModelKB  int // VmRSS idle without a model (0 if not measured)
	noModelRdy time.Duration
}

func run(agent, model string, runs, requests, clients int) error {
	st, err := os.Stat(agent)
	if err != nil {
		return err
	}
	fmt.Printf("footprint: %s %s/%s, %d CPUs, model %s\n", agent, goruntime.GOOS, goruntime.GOARCH, goruntime.NumCPU(), filepath.Base(model))
	fmt.Printf("binary size            %6.1f MB (%d bytes; libtensorflowlite_c.so is separate)\n", float64(st.Size())/1e6, st.Size())

	var all []sample
	for i := 0; i < runs; i++ {
		var s sample
		if err := measure(agent, model, requests, clients, &s); err != nil {
			return err
		}
		if err := measureEmpty(agent, &s); err != nil {
			fmt.Fprintln(os.Stderr, "footprint: no-model start:", err)
		}
		all = append(all, s)
	}
	med := func(f func(sample) float64) float64 {
		v := make([]float64, len(all))
		for i, s := range all {
			v[i] = f(s)
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
	mb := func(kb int) float64 { return float64(kb) / 1024 }
	fmt.Printf("start to ready         %6.1f ms (median of %d; goal < 300 ms)\n", med(func(s sample) float64 { return ms(s.ready) }), runs)
	fmt.Printf("idle RSS, model loaded %6.1f MB\n", med(func(s sample) float64 { return mb(s.idleKB) }))
	fmt.Printf("RSS while serving      %6.1f MB (after %d requests from %d clients; peak %.1f MB)\n",
		med(func(s sample) float64 { return mb(s.servingKB) }), requests, clients, med(func(s sample) float64 { return mb(s.peakKB) }))
	if all[0].noModelKB > 0 {
		agentOnly := med(func(s sample) float64 { return mb(s.noModelKB) })
		modelShare := med(func(s sample) float64 { return mb(s.idleKB - s.noModelKB) })
		fmt.Printf("idle RSS, no model     %6.1f MB (the agent beyond the model; goal < 25 MB), ready in %.1f ms\n",
			agentOnly, med(func(s sample) float64 { return ms(s.noModelRdy) }))
		fmt.Printf("model's share          %6.1f MB (idle with model minus idle without: file, arenas, packed weights)\n", modelShare)
	}
	return nil
}

// proc is a running agent; done closes when it has exited.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// start execs the agent with args and waits for /v2/health/ready; it returns
// the process, its base URL and the time from exec to ready.
func start(agent string, args ...string) (*proc, string, time.Duration, error) {
	port, err := freePort()
	if err != nil {
		return nil, "", 0, err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	dir, err := os.MkdirTemp("", "footprint-")
	if err != nil {
		return nil, "", 0, err
	}
	args = append(args, "--listen", addr, "--data-dir", dir, "--log-level", "warn")
	cmd := exec.Command(agent, append([]string{"serve"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	url := "http://" + addr
	client := &http.Client{Timeout: time.Second}
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, "", 0, err
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); os.RemoveAll(dir); close(p.done) }()
	for time.Since(t0) < 30*time.Second {
		resp, err := client.Get(url + "/v2/health/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p, url, time.Since(t0), nil
			}
		}
		select {
		case <-p.done:
			return nil, "", 0, fmt.Errorf("agent exited: %s", strings.TrimSpace(stderr.String()))
		case <-time.After(time.Millisecond):
		}
	}
	cmd.Process.Kill()
	<-p.done
	return nil, "", 0, fmt.Errorf("agent not ready in 30s: %s", strings.TrimSpace(stderr.String()))
}

// stop sends SIGTERM, as systemd does, and kills after 10 s.
func stop(p *proc) {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

func measure(agent, model string, requests, clients int, s *sample) error {
	cmd, url, ready, err := start(agent, "--model", model, "--name", "m")
	if err != nil {
		return err
	}
	defer stop(cmd)
	s.ready = ready
	time.Sleep(500 * time.Millisecond) // let the runtime settle
	if s.idleKB, _, err = rss(cmd.cmd.Process.Pid); err != nil {
		return err
	}
	body, err := inferBody(url)
	if err != nil {
		return err
	}
	if err := load(url+"/v2/models/m/infer", body, requests, clients); err != nil {
		return err
	}
	s.servingKB, s.peakKB, err = rss(cmd.cmd.Process.Pid)
	return err
}

// measureEmpty starts the agent with a config that lists no model.
func measureEmpty(agent string, s *sample) error {
	f, err := os.CreateTemp("", "footprint-*.yaml")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.WriteString("models: []\n"); err != nil {
		return err
	}
	f.Close()
	cmd, _, ready, err := start(agent, "--config", f.Name())
	if err != nil {
		return err
	}
	defer stop(cmd)
	s.noModelRdy = ready
	time.Sleep(500 * time.Millisecond)
	s.noModelKB, _, err = rss(cmd.cmd.Process.Pid)
	return err
}

// inferBody builds an Open Inference Protocol JSON request for every input
// of model "m", from its metadata, with a varied float signal.
func inferBody(url string) ([]byte, error) {
	resp, err := http.Get(url + "/v2/models/m")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var meta struct {
		Inputs []struct {
			Name     string `json:"name"`
			Datatype string `json:"datatype"`
			Shape    []int  `json:"shape"`
		} `json:"inputs"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&meta); err != nil || len(meta.Inputs) == 0 {
		return nil, fmt.Errorf("model metadata: %v (%d inputs)", err, len(meta.Inputs))
	}
	type input struct {
		Name     string    `json:"name"`
		Datatype string    `json:"datatype"`
		Shape    []int     `json:"shape"`
		Data     []float32 `json:"data"`
	}
	var req struct {
		Inputs []input `json:"inputs"`
	}
	for _, in := range meta.Inputs {
		n := 1
		for i, d := range in.Shape {
			if d < 0 {
				in.Shape[i] = 1
			}
			n *= in.Shape[i]
		}
		data := make([]float32, n)
		for i := range data {
			data[i] = float32((i*37)%200)/100 - 1
		}
		req.Inputs = append(req.Inputs, input{in.Name, in.Datatype, in.Shape, data})
	}
	return json.Marshal(req)
}

func load(url string, body []byte, requests, clients int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var (
		mu       sync.Mutex
		firstErr error
		wg       sync.WaitGroup
	)
	next := make(chan struct{}, requests)
	for range requests {
		next <- struct{}{}
	}
	close(next)
	for range clients {
		wg.Go(func() {
			for range next {
				err := post(ctx, url, body)
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
			}
		})
	}
	wg.Wait()
	return firstErr
}

func post(ctx context.Context, url string, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("infer: %s: %.200s", resp.Status, b)
	}
	return nil
}

// rss reads VmRSS and VmHWM (peak) of pid, in kB.
func rss(pid int) (cur, peak int, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "VmRSS:":
			cur, _ = strconv.Atoi(f[1])
		case "VmHWM:":
			peak, _ = strconv.Atoi(f[1])
		}
	}
	if cur == 0 {
		return 0, 0, errors.New("no VmRSS in /proc status")
	}
	return cur, peak, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
