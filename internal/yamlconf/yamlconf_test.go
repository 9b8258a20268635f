package yamlconf

import (
	"strings"
	"testing"
	"time"
)

type section struct {
	Size int `yaml:"size"`
}

type conf struct {
	Threads  int               `yaml:"threads"`
	Rate     float64           `yaml:"rate"`
	Timeout  time.Duration     `yaml:"timeout"`
	On       bool              `yaml:"on"`
	Name     string            `yaml:"name"`
	Labels   map[string]string `yaml:"labels"`
	List     []string          `yaml:"list"`
	Section  section           `yaml:"section"`
	Sections []section         `yaml:"sections"`
}

func TestDecode(t *testing.T) {
	for _, tc := range []struct {
		yaml string
		want string // "" for no error
	}{
		{"", ""},
		{"threads: 2\ntimeout: 5s\n", ""},
		{"threads: 2\nthread: 3\n", `agent.yaml:2: unknown key "thread"`},
		{"section:\n  size: 1\n  sise: 2\n", `agent.yaml:3: unknown key "sise"`},
		{"sections:\n  - size: 1\n  - szie: 2\n", `agent.yaml:3: unknown key "szie"`},
		{"threads: lots\n", `agent.yaml:1: "lots" is not an integer`},
		{"rate: fast\n", `agent.yaml:1: "fast" is not a number`},
		{"\ntimeout: 5 minutes\n", `agent.yaml:2: "5 minutes" is not a duration (like 30s or 5m)`},
		{"on: maybe\n", `agent.yaml:1: "maybe" is not true or false`},
		{"labels: [a, b]\n", `agent.yaml:1: a list is not a mapping`},
		{"list: {a: b}\n", `agent.yaml:1: a mapping is not a list`},
		{"section: 3\n", `agent.yaml:1: "3" is not a mapping of settings`},
		{"threads: 1\nthreads: 2\n", `agent.yaml:2: key "threads" already set at line 1`},
		{"threads: 1\n  name: x\n", `agent.yaml:2: mapping values are not allowed in this context`},
		{"threads: [1\n", `agent.yaml:`},
	} {
		var c conf
		err := Decode("agent.yaml", []byte(tc.yaml), &c)
		if tc.want == "" {
			if err != nil {
				t.Errorf("%q: got %v, want no error", tc.yaml, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("%q: got no error, want %q", tc.yaml, tc.want)
			continue
		}
		if !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%q: got %q, want %q", tc.yaml, err, tc.want)
		}
		for _, leak := range []string{"yamlconf.", "time.Duration", "!!", "float64", "int"} {
			if leak == "int" && strings.Contains(tc.want, "integer") {
				continue
			}
			if strings.Contains(err.Error(), leak) {
				t.Errorf("%q: error %q leaks %q", tc.yaml, err, leak)
			}
		}
	}
}

func TestDecodeEveryError(t *testing.T) {
	var c conf
	err := Decode("f.yaml", []byte("thread: 1\nrate: x\n"), &c)
	got := strings.Split(err.Error(), "\n")
	want := []string{`f.yaml:1: unknown key "thread"`, `f.yaml:2: "x" is not a number`}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("got %q, want %q", got, want)
	}
}

func FuzzDecode(f *testing.F) {
	for _, s := range []string{"threads: 2\n", "thread: 3\n", "labels: [a]\n", "threads: [1\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var c conf
		if err := Decode("f.yaml", b, &c); err != nil && !strings.HasPrefix(err.Error(), "f.yaml:") {
			t.Fatalf("error %q does not start with the file name", err)
		}
	})
}
