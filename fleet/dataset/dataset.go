// Package dataset writes the samples the controller kept (fleet/registry)
// as a dataset for retraining: every tensor of every sample an .npy file,
// and index.jsonl, one JSON object a sample, saying which files hold its
// inputs and outputs and where the sample came from.
//
//	OUT/index.jsonl
//	OUT/<id>/in_<k>.npy     input k of sample id (k in the sample's order)
//	OUT/<id>/out_<k>.npy    output k
//
// A tensor the device cut short (truncated) is written as a flat array of
// the whole elements it has, and flagged in the index; one whose datatype
// .npy cannot hold (BYTES) is listed without a file.
package dataset

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/internal/atomicfile"
	"github.com/outpost-edge/outpost/internal/npy"
	"github.com/outpost-edge/outpost/protocol"
)

// Source is where samples come from: *registry.Registry. Samples calls fn
// for each selected sample, oldest first, and stops at fn's first error.
type Source interface {
	Samples(f registry.SampleFilter, fn func(*registry.StoredSample) error) error
}

// Entry is one line of index.jsonl.
type Entry struct {
	ID        int64     `json:"id"`
	Device    string    `json:"device"`
	Model     string    `json:"model"`
	Version   string    `json:"version"`
	Time      time.Time `json:"time"`
	RequestID string    `json:"request_id,omitempty"`
	LatencyMS float64   `json:"latency_ms"`
	Error     string    `json:"error,omitempty"`
	Inputs    []Tensor  `json:"inputs"`
	Outputs   []Tensor  `json:"outputs"`
}

// Tensor says where one tensor of a sample went.
type Tensor struct {
	Name     string  `json:"name"`
	Datatype string  `json:"datatype"`
	Shape    []int64 `json:"shape"`
	// File is relative to the output directory; empty when the datatype
	// has no .npy form.
	File string `json:"file,omitempty"`
	// Truncated: the device kept only the first bytes; the file holds
	// them as a flat array.
	Truncated bool `json:"truncated,omitempty"`
}

// Write writes the samples f selects to dir (created; it must be empty or
// absent) and returns how many it wrote.
func Write(src Source, f registry.SampleFilter, dir string) (int, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return 0, fmt.Errorf("dataset: %w", err)
	}
	if ents, err := os.ReadDir(dir); err != nil || len(ents) > 0 {
		if err == nil {
			err = errors.New("not empty")
		}
		return 0, fmt.Errorf("dataset: %s: %w", dir, err)
	}
	// The index is written last, atomically: a directory with an
	// index.jsonl is complete.
	n := 0
	err := atomicfile.Write(filepath.Join(dir, "index.jsonl"), atomicfile.Options{Perm: 0o640}, func(iw io.Writer) error {
		w := bufio.NewWriter(iw)
		enc := json.NewEncoder(w)
		err := src.Samples(f, func(s *registry.StoredSample) error {
			e := Entry{ID: s.ID, Device: s.Device, Model: s.Model, Version: s.Version, Time: s.Time, RequestID: s.Sample.RequestID,
				LatencyMS: float64(s.Sample.Latency) / float64(time.Millisecond), Error: s.Sample.Error}
			sub := strconv.FormatInt(s.ID, 10)
			if err := os.Mkdir(filepath.Join(dir, sub), 0o750); err != nil {
				return err
			}
			var err error
			if e.Inputs, err = writeTensors(dir, sub, "in", s.Sample.Inputs); err != nil {
				return err
			}
			if e.Outputs, err = writeTensors(dir, sub, "out", s.Sample.Outputs); err != nil {
				return err
			}
			n++
			return enc.Encode(&e)
		})
		if err != nil {
			return err
		}
		return w.Flush()
	})
	if err != nil {
		return n, fmt.Errorf("dataset: %w", err)
	}
	return n, nil
}

func writeTensors(dir, sub, prefix string, ts []protocol.TensorSample) ([]Tensor, error) {
	out := make([]Tensor, 0, len(ts))
	for k, t := range ts {
		e := Tensor{Name: t.Name, Datatype: t.Datatype, Shape: t.Shape, Truncated: t.Truncated}
		size := npy.ElemSize(t.Datatype)
		if size == 0 {
			out = append(out, e)
			continue
		}
		shape, data := t.Shape, t.Data
		if !fits(shape, size, len(data)) {
			// Cut short, or a shape with unknown dimensions: the whole
			// elements there are, flat.
			data = data[:len(data)/size*size]
			shape = []int64{int64(len(data) / size)}
		}
		b, err := npy.Append(nil, t.Datatype, shape, data)
		if err != nil {
			return nil, err
		}
		e.File = filepath.Join(sub, fmt.Sprintf("%s_%d.npy", prefix, k))
		if err := os.WriteFile(filepath.Join(dir, e.File), b, 0o640); err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, nil
}

// fits reports whether shape's elements of size bytes are n bytes.
func fits(shape []int64, size, n int) bool {
	elems := int64(1)
	for _, d := range shape {
		if d < 0 {
			return false
		}
		elems *= d
	}
	return elems*int64(size) == int64(n)
}
