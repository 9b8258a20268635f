package batch

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/outpost-edge/outpost/agent/catalog"
	"github.com/outpost-edge/outpost/agent/tensor"
)

// Each reads a directory as batch does, and cuts a raw item of a model with
// two inputs at the first one's size; a raw item of the wrong size and an
// unsupported file are item errors, and the walk goes on.
func TestEachSplitsRawInputs(t *testing.T) {
	e := catalog.Entry{Name: "two", Inputs: []tensor.Info{
		{Name: "a", DataType: tensor.Uint8, Shape: []int{1, 3}},
		{Name: "b", DataType: tensor.FP32, Shape: []int{1, 2}},
	}}
	dir := t.TempDir()
	files := map[string][]byte{
		"0.bin":  append([]byte{1, 2, 3}, make([]byte, 8)...),
		"1.bin":  {1, 2, 3},
		"2.txt":  []byte("x"),
		"3.json": []byte(`{"inputs":[{"name":"b","datatype":"FP32","shape":[1,2],"data":[1,2]},{"name":"a","datatype":"UINT8","shape":[1,3],"data":[7,8,9]}]}`),
	}
	for n, b := range files {
		if err := os.WriteFile(filepath.Join(dir, n), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var keys []string
	var sizes [][]int
	var bad []string
	err := Each(dir, e, 0, func(key string, ins [][]byte, err error) error {
		keys = append(keys, key)
		if err != nil {
			if !errors.Is(err, ErrItem) {
				t.Errorf("%s: %v does not wrap ErrItem", key, err)
			}
			bad = append(bad, key)
			return nil
		}
		var s []int
		for _, in := range ins {
			s = append(s, len(in))
		}
		sizes = append(sizes, s)
		if key == "3.json" && ins[0][2] != 9 {
			t.Errorf("3.json: input a is %v, want the request's a in signature order", ins[0])
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 4 || len(bad) != 2 || bad[0] != "1.bin" || bad[1] != "2.txt" {
		t.Fatalf("keys %v, bad %v; want 4 items, 1.bin and 2.txt bad", keys, bad)
	}
	for _, s := range sizes {
		if len(s) != 2 || s[0] != 3 || s[1] != 8 {
			t.Errorf("inputs of %v bytes, want [3 8]", s)
		}
	}
	stop := errors.New("stop")
	if err := Each(dir, e, 0, func(string, [][]byte, error) error { return stop }); err != stop {
		t.Errorf("fn's error: got %v, want it back", err)
	}
	if err := Each(filepath.Join(dir, "0.bin"), e, 0, nil); !errors.Is(err, ErrInput) {
		t.Errorf("a single .bin file: got %v, want ErrInput", err)
	}
}
