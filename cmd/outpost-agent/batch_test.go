package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/outpost-edge/outpost/models/testmodel"
)

// writeFaceRows writes an .npy file of n FP32 images [n 128 128 3] for the
// face detection model, each row different.
func writeFaceRows(t *testing.T, path string, n int) {
	t.Helper()
	const size = 128 * 128 * 3
	dict := fmt.Sprintf("{'descr': '<f4', 'fortran_order': False, 'shape': (%d, 128, 128, 3), }", n)
	dict += strings.Repeat(" ", (64-(10+len(dict)+1)%64)%64) + "\n"
	f, err := os.Create(path)
	require.NoError(t, err)
	defer f.Close()
	hdr := binary.LittleEndian.AppendUint16([]byte("\x93NUMPY\x01\x00"), uint16(len(dict)))
	_, err = f.Write(append(hdr, dict...))
	require.NoError(t, err)
	row := make([]byte, 4*size)
	for i := range n {
		for j := range size {
			v := float32(math.Sin(float64(j*(i%13+1)) * 0.002))
			binary.LittleEndian.PutUint32(row[4*j:], math.Float32bits(v))
		}
		_, err := f.Write(row)
		require.NoError(t, err)
	}
}

// TestBatchKillResume SIGKILLs the real binary twice while it writes its
// output, resumes it each time (once after cutting the last line in half,
// as a kill amid a write leaves it), and checks that the final output is
// byte for byte the output of an uninterrupted run: every item exactly
// once, in order, none missing.
func TestBatchKillResume(t *testing.T) {
	bin := build(t).agent
	dir := t.TempDir()
	model := testmodel.Path(t, testmodel.FaceShort)
	in := filepath.Join(dir, "in.npy")
	const n = 400
	writeFaceRows(t, in, n)
	args := func(out string, extra ...string) []string {
		return append([]string{"batch", "--model", model, "--input", in, "--output", out, "--workers", "1", "--progress", "lines"}, extra...)
	}

	ref := filepath.Join(dir, "ref.jsonl")
	r := run(t, nil, bin, args(ref)...)
	require.Equal(t, 0, r.code, r.stderr)
	want, err := os.ReadFile(ref)
	require.NoError(t, err)
	require.Equal(t, n, bytes.Count(want, []byte("\n")))

	out := filepath.Join(dir, "out.jsonl")
	killAt := func(frac float64, sig syscall.Signal, extra ...string) {
		t.Helper()
		cmd := exec.Command(bin, args(out, extra...)...)
		var stderr syncBuffer
		cmd.Stderr = &stderr
		require.NoError(t, cmd.Start())
		target := int64(frac * float64(len(want)))
		deadline := time.Now().Add(2 * time.Minute)
		for {
			fi, err := os.Stat(out)
			if err == nil && fi.Size() >= target {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("output never reached %d bytes: %s", target, stderr.String())
			}
			time.Sleep(2 * time.Millisecond)
		}
		require.NoError(t, cmd.Process.Signal(sig))
		err := cmd.Wait()
		ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
		if sig == syscall.SIGKILL {
			require.True(t, ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL,
				"the run ended before the kill (%v): make the input larger\n%s", err, stderr.String())
		} else {
			// Stopped cleanly: an exit (not the signal's death), saying
			// how to go on, the output synced up to a complete line.
			require.True(t, ok && ws.Exited() && ws.ExitStatus() == 1, "%v\n%s", err, stderr.String())
			require.Contains(t, stderr.String(), "stopped; --resume continues it")
		}
		got, err := os.ReadFile(out)
		require.NoError(t, err)
		lines := bytes.Count(got, []byte("\n"))
		t.Logf("killed at %d bytes: %d complete lines, torn tail: %v", len(got), lines, len(got) > 0 && got[len(got)-1] != '\n')
		require.Less(t, lines, n, "killed after the last record")
		// What is there is a prefix of the uninterrupted run's output.
		require.True(t, bytes.HasPrefix(want, got[:bytes.LastIndexByte(got, '\n')+1]), "complete records differ from the reference")
	}

	killAt(0.3, syscall.SIGKILL)
	killAt(0.5, syscall.SIGTERM, "--resume")
	if got, _ := os.ReadFile(out); len(got) == 0 || got[len(got)-1] != '\n' {
		t.Fatalf("SIGTERM left a torn record: %q", got[max(0, len(got)-40):])
	}
	killAt(0.7, syscall.SIGKILL, "--resume")
	// Cut the last complete line in half: a kill amid a write.
	got, err := os.ReadFile(out)
	require.NoError(t, err)
	end := bytes.LastIndexByte(got, '\n')
	start := bytes.LastIndexByte(got[:end], '\n') + 1
	require.NoError(t, os.WriteFile(out, got[:start+(end-start)/2], 0o644))
	kept := bytes.Count(got[:start], []byte("\n"))

	r = run(t, nil, bin, args(out, "--resume")...)
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stderr, fmt.Sprintf("%d items written (0 errors), %d already in the output, %d in the input", n-kept, kept, n))
	require.Contains(t, r.stderr, "dropped_bytes=")
	final, err := os.ReadFile(out)
	require.NoError(t, err)
	require.Equal(t, n, bytes.Count(final, []byte("\n")))
	require.True(t, bytes.Equal(want, final), "the resumed output differs from an uninterrupted run")

	// Resuming a finished output does nothing; without --resume it is refused.
	r = run(t, nil, bin, args(out, "--resume")...)
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stderr, fmt.Sprintf("0 items written (0 errors), %d already in the output", n))
	r = run(t, nil, bin, args(out)...)
	require.Equal(t, 1, r.code)
	require.Contains(t, r.stderr, "output exists")
	// A shorter input behind the same output: its items no longer match
	// the kept lines' keys, and --resume refuses it.
	writeFaceRows(t, in, n/2)
	r = run(t, nil, bin, args(out, "--resume")...)
	require.Equal(t, 1, r.code, r.stderr)
	require.Contains(t, r.stderr, fmt.Sprintf("input changed since the output was written: the output holds %d records, the input %d items", n, n/2))
}

// TestBatchModelFromStore runs a batch against a model the agent serves
// from its store, by name: the signed bundle is installed into the data
// directory's store (where serve finds it), and the records carry its name,
// version and digest.
func TestBatchModelFromStore(t *testing.T) {
	b := build(t)
	keys, export := fleetDir(t, b)
	bundleDir := export("face", 3, testmodel.FaceShort)
	data := t.TempDir()
	r := run(t, nil, b.agent, "install", "--root", filepath.Join(keys, "root.json"), "--data-dir", data, bundleDir)
	require.Equal(t, 0, r.code, r.stderr)

	in := filepath.Join(t.TempDir(), "in.npy")
	writeFaceRows(t, in, 3)
	out := filepath.Join(t.TempDir(), "out.jsonl")
	r = run(t, nil, b.agent, "batch", "--model", "face", "--data-dir", data, "--input", in, "--output", out)
	require.Equal(t, 0, r.code, r.stderr)
	mb, err := os.ReadFile(testmodel.Path(t, testmodel.FaceShort))
	require.NoError(t, err)
	sum := sha256.Sum256(mb)
	got, err := os.ReadFile(out)
	require.NoError(t, err)
	lines := bytes.Split(bytes.TrimSuffix(got, []byte("\n")), []byte("\n"))
	require.Len(t, lines, 3)
	for i, l := range lines {
		var rec struct {
			Index  int `json:"index"`
			Result struct {
				Name       string `json:"model_name"`
				Version    string `json:"model_version"`
				Parameters struct {
					Digest string `json:"model_digest"`
				} `json:"parameters"`
			} `json:"result"`
		}
		require.NoError(t, json.Unmarshal(l, &rec))
		require.Equal(t, i, rec.Index)
		require.Equal(t, "face", rec.Result.Name)
		require.Equal(t, "3", rec.Result.Version)
		require.Equal(t, "sha256:"+hex.EncodeToString(sum[:]), rec.Result.Parameters.Digest)
	}

	tests := []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"unknown name", []string{"--model", "hands", "--data-dir", data}, 1, "not found"},
		{"name without a data dir", []string{"--model", "face"}, 1, "a name needs --data-dir"},
		{"no input", []string{"--model", "face", "--data-dir", data, "--input", ""}, 2, "give --model, --input and --output"},
		{"bad progress", []string{"--model", "face", "--data-dir", data, "--progress", "loud"}, 2, "bad --progress"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"batch", "--input", in, "--output", filepath.Join(t.TempDir(), "o.jsonl")}, tc.args...)
			r := run(t, nil, b.agent, args...)
			require.Equal(t, tc.code, r.code, r.stderr)
			require.Contains(t, r.stderr, tc.msg)
		})
	}
}

// TestBatchOutputFull runs the real binary under a file size limit that
// the output reaches half way (as a full disk would stop it): the run
// stops with status 1 and says that --resume goes on, and the resumed run,
// without the limit, gives the output of an uninterrupted run byte for
// byte. The write that hits the limit is cut short, so the file ends in a
// torn record that the resume drops.
func TestBatchOutputFull(t *testing.T) {
	bin := build(t).agent
	dir := t.TempDir()
	model := testmodel.Path(t, testmodel.FaceShort)
	in := filepath.Join(dir, "in.npy")
	const n = 200 // about 17 MB of records
	writeFaceRows(t, in, n)
	args := func(out string, extra ...string) []string {
		return append([]string{"batch", "--model", model, "--input", in, "--output", out, "--progress", "none"}, extra...)
	}
	ref := filepath.Join(dir, "ref.jsonl")
	r := run(t, nil, bin, args(ref)...)
	require.Equal(t, 0, r.code, r.stderr)
	want, err := os.ReadFile(ref)
	require.NoError(t, err)

	// ulimit -f counts blocks of 512 or 1,024 bytes, by shell: 8,192 is
	// 4 or 8 MiB, within the output either way. Go ignores SIGXFSZ, so
	// the write that reaches the limit fails with EFBIG.
	out := filepath.Join(dir, "out.jsonl")
	r = run(t, nil, "sh", append([]string{"-c", `ulimit -f 8192 && exec "$0" "$@"`, bin}, args(out)...)...)
	require.Equal(t, 1, r.code, r.stderr)
	require.Contains(t, r.stderr, "file too large")
	require.Contains(t, r.stderr, "the records written are kept: --resume continues once the output can be written")
	got, err := os.ReadFile(out)
	require.NoError(t, err)
	require.Contains(t, []int{4 << 20, 8 << 20}, len(got), "the output stops at the limit")
	require.True(t, bytes.HasPrefix(want, got), "what was written is a prefix of the uninterrupted run's output")
	kept := bytes.Count(got, []byte("\n"))
	require.Greater(t, kept, 0)
	require.Less(t, kept, n)
	require.NotEqual(t, byte('\n'), got[len(got)-1], "the last write was cut short by the limit")

	r = run(t, nil, bin, args(out, "--resume")...)
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stderr, fmt.Sprintf("%d items written (0 errors), %d already in the output, %d in the input", n-kept, kept, n))
	final, err := os.ReadFile(out)
	require.NoError(t, err)
	require.True(t, bytes.Equal(want, final), "the resumed output differs from an uninterrupted run")
}
